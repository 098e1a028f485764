//! The packages every Flotilla server has without installing anything,
//! written for Flotilla in Elastic's package format (`builtin/`), embedded
//! at build time. They cannot be removed; installing the same name and
//! version is refused.

use std::sync::OnceLock;

use crate::package::{Files, Package};

macro_rules! file {
    ($pkg:literal, $path:literal) => {
        (
            $path,
            include_str!(concat!("../builtin/", $pkg, "/", $path)),
        )
    };
}

const BUILTIN: &[(&str, &[(&str, &str)])] = &[
    (
        "flotilla_verifier-1.0.0",
        &[
            file!(
                "flotilla_verifier-1.0.0",
                "data_stream/permission/agent/stream/stream.yml.hbs"
            ),
            file!(
                "flotilla_verifier-1.0.0",
                "data_stream/permission/manifest.yml"
            ),
            file!("flotilla_verifier-1.0.0", "manifest.yml"),
        ],
    ),
    (
        "log-2.3.0",
        &[
            file!("log-2.3.0", "agent/input/input.yml.hbs"),
            file!("log-2.3.0", "manifest.yml"),
        ],
    ),
    (
        "nginx-1.20.0",
        &[
            file!(
                "nginx-1.20.0",
                "data_stream/access/agent/stream/stream.yml.hbs"
            ),
            file!("nginx-1.20.0", "data_stream/access/manifest.yml"),
            file!(
                "nginx-1.20.0",
                "data_stream/error/agent/stream/stream.yml.hbs"
            ),
            file!("nginx-1.20.0", "data_stream/error/manifest.yml"),
            file!("nginx-1.20.0", "manifest.yml"),
        ],
    ),
    (
        "system-1.60.0",
        &[
            file!("system-1.60.0", "data_stream/auth/agent/stream/log.yml.hbs"),
            file!("system-1.60.0", "data_stream/auth/manifest.yml"),
            file!(
                "system-1.60.0",
                "data_stream/cpu/agent/stream/stream.yml.hbs"
            ),
            file!("system-1.60.0", "data_stream/cpu/manifest.yml"),
            file!(
                "system-1.60.0",
                "data_stream/filesystem/agent/stream/stream.yml.hbs"
            ),
            file!("system-1.60.0", "data_stream/filesystem/manifest.yml"),
            file!(
                "system-1.60.0",
                "data_stream/memory/agent/stream/stream.yml.hbs"
            ),
            file!("system-1.60.0", "data_stream/memory/manifest.yml"),
            file!(
                "system-1.60.0",
                "data_stream/network/agent/stream/stream.yml.hbs"
            ),
            file!("system-1.60.0", "data_stream/network/manifest.yml"),
            file!(
                "system-1.60.0",
                "data_stream/syslog/agent/stream/log.yml.hbs"
            ),
            file!("system-1.60.0", "data_stream/syslog/manifest.yml"),
            file!("system-1.60.0", "manifest.yml"),
        ],
    ),
];

/// The built-in packages, parsed once.
pub fn builtin() -> &'static [Package] {
    static PACKAGES: OnceLock<Vec<Package>> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        BUILTIN
            .iter()
            .map(|(folder, files)| {
                let files: Files = files
                    .iter()
                    .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
                    .collect();
                let p = Package::from_files(files).unwrap_or_else(|e| {
                    panic!("built-in package {folder}: {e} (checked by a unit test)")
                });
                debug_assert_eq!(*folder, format!("{}-{}", p.name(), p.version()));
                p
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyRequest;
    use serde_json::json;

    #[test]
    fn builtins_parse_are_named_by_their_folder_and_render() {
        let names: Vec<_> = builtin().iter().map(|p| p.name().to_owned()).collect();
        assert_eq!(names, ["flotilla_verifier", "log", "nginx", "system"]);
        for (folder, _) in BUILTIN {
            let p = builtin()
                .iter()
                .find(|p| format!("{}-{}", p.name(), p.version()) == *folder);
            assert!(p.is_some(), "{folder}");
        }
        let system = builtin().iter().find(|p| p.name() == "system").unwrap();
        let r = system
            .resolve_policy(PolicyRequest::default(), None, &[], &mut || unreachable!())
            .unwrap();
        let cpu = r
            .inputs
            .iter()
            .find(|i| i.input_type == "system/metrics")
            .unwrap();
        assert_eq!(
            cpu.streams[0].compiled_stream,
            Some(json!({"metricsets": ["cpu"], "period": "10s"}))
        );
        // Custom logs need paths.
        let log = builtin().iter().find(|p| p.name() == "log").unwrap();
        let e = log
            .resolve_policy(PolicyRequest::default(), None, &[], &mut || unreachable!())
            .unwrap_err();
        assert_eq!(e.field, "inputs.logs-logfile.streams.log.logs.vars.paths");
    }

    #[test]
    fn the_verifier_renders_the_agent_input_contract() {
        let v = builtin()
            .iter()
            .find(|p| p.name() == "flotilla_verifier")
            .unwrap();
        let vars = json!({
            "identity_federation_id": "c1",
            "identity_federation_name": "prod \"account\"",
            "verification_id": "v1",
            "provider": "aws",
            "role_arn": "arn:aws:iam::123456789012:role/r",
            "external_id": "ext-1",
            "sts_endpoint": "http://127.0.0.1:5000",
            "policies": "[{\"policy_id\": \"p1\", \"integrations\": [{\"package_policy_id\": \"pp1\", \"permissions\": [{\"action\": \"ec2:DescribeInstances\", \"required\": true}]}]}]"
        });
        let inputs = json!({"verifier-permission_verifier": {"streams": {"flotilla_verifier.permission": {"vars": vars}}}});
        let mut n = 0;
        let r = v
            .resolve_policy(
                PolicyRequest {
                    vars: None,
                    inputs: Some(&inputs),
                },
                None,
                &[],
                &mut || {
                    n += 1;
                    format!("secret-{n}")
                },
            )
            .unwrap();
        assert_eq!(r.new_secrets.len(), 1);
        let s = r.inputs[0].streams[0].compiled_stream.clone().unwrap();
        assert_eq!(s["identity_federation"]["id"], "c1");
        assert_eq!(s["identity_federation"]["name"], "prod \"account\"");
        assert_eq!(s["verification"], json!({"id": "v1", "type": "on_demand"}));
        assert_eq!(s["provider"], "aws");
        assert_eq!(s["aws"]["role_arn"], "arn:aws:iam::123456789012:role/r");
        assert_eq!(s["aws"]["external_id"], "$co.elastic.secret{secret-1}");
        assert_eq!(s["aws"]["sts_endpoint"], "http://127.0.0.1:5000");
        assert_eq!(s["aws"]["default_region"], "us-east-1");
        assert_eq!(
            s["policies"][0]["integrations"][0]["permissions"][0]["action"],
            "ec2:DescribeInstances"
        );
    }
}
