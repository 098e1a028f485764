//! Every package in `../shared/packages/` installs, and every policy test
//! there (`_dev/test/policy/test-*.yml`) compiles to exactly the agent
//! policy Kibana produced (`test-*.expected`), both normalised the way
//! elastic-package's policy test runner normalises them.
//!
//! The packages are Elastic's (test data, read in place, never copied).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use flotilla_domain::package_policy::PackagePolicy;
use flotilla_packages::archive::read_dir;
use flotilla_packages::compile::{compile, Target};
use flotilla_packages::package::parse_yaml_value;
use flotilla_packages::policy::{PolicyRequest, DATASET_VAR};
use flotilla_packages::Package;

fn shared_packages() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/packages");
    assert!(
        root.is_dir(),
        "the shared test packages are missing at {}",
        root.display()
    );
    root
}

struct PolicyTest {
    name: String,
    data_stream: Option<String>,
    config: Map<String, Value>,
    expected: Value,
}

fn policy_tests(dir: &Path) -> Vec<PolicyTest> {
    let mut out = Vec::new();
    let mut scan = |tests_dir: PathBuf, data_stream: Option<String>| {
        let Ok(entries) = std::fs::read_dir(&tests_dir) else {
            return;
        };
        let mut names: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        names.sort();
        for path in names {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".yml").filter(|n| n.starts_with("test-")) else {
                continue;
            };
            let config = parse_yaml_value(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let expected_path = tests_dir.join(format!("{name}.expected"));
            let expected =
                parse_yaml_value(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
            out.push(PolicyTest {
                name: name.to_owned(),
                data_stream: data_stream.clone(),
                config: config.as_object().cloned().unwrap_or_default(),
                expected,
            });
        }
    };
    scan(dir.join("_dev/test/policy"), None);
    if let Ok(entries) = std::fs::read_dir(dir.join("data_stream")) {
        for e in entries {
            let e = e.unwrap();
            scan(
                e.path().join("_dev/test/policy"),
                Some(e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    out
}

/// The package policy request elastic-package sends for a test
/// (`BuildInputPackagePolicy` / `BuildIntegrationPackagePolicy`).
fn request_for(package: &Package, test: &PolicyTest) -> (Option<Map<String, Value>>, Value) {
    let mut user = test
        .config
        .get("data_stream")
        .and_then(|d| d.get("vars"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(v) = test.config.get("vars").and_then(Value::as_object) {
        user.extend(v.clone());
    }
    let legacy = test.config.get("policy_api_format").and_then(Value::as_str) == Some("legacy");
    let input = test.config.get("input").and_then(Value::as_str);
    let pick = |decls: &[flotilla_packages::manifest::Var]| -> Map<String, Value> {
        decls
            .iter()
            .filter_map(|d| user.get(&d.name).map(|v| (d.name.clone(), v.clone())))
            .collect()
    };
    let package_vars = pick(&package.manifest.vars);
    let package_vars = (!package_vars.is_empty()).then_some(package_vars);
    if package.is_input_package() {
        let input = input
            .map(str::to_owned)
            .unwrap_or_else(|| package.manifest.policy_templates[0].input.clone().unwrap());
        let t = package
            .manifest
            .policy_templates
            .iter()
            .find(|t| t.input.as_deref() == Some(input.as_str()))
            .unwrap();
        let mut vars = pick(&t.vars);
        let dataset = user
            .get(DATASET_VAR)
            .cloned()
            .unwrap_or_else(|| json!(t.name));
        vars.insert(DATASET_VAR.into(), dataset);
        if let Some(ty) = user.get("data_stream.type") {
            vars.insert("data_stream.type".into(), ty.clone());
        }
        let stream_key = format!("{}.{}", package.name(), t.name);
        if legacy {
            let inputs = json!([{
                "type": input, "policy_template": t.name, "enabled": true,
                "streams": [{"enabled": true,
                             "data_stream": {"type": t.stream_type, "dataset": stream_key},
                             "vars": vars.iter().map(|(k, v)| (k.clone(), json!({"value": v}))).collect::<Map<_, _>>()}]
            }]);
            return (package_vars, inputs);
        }
        let mut inputs = Map::new();
        for other in &package.manifest.policy_templates {
            inputs.insert(
                format!("{}-{}", other.name, other.input.clone().unwrap()),
                json!({"enabled": false}),
            );
        }
        inputs.insert(
            format!("{}-{input}", t.name),
            json!({"enabled": true, "streams": {stream_key: {"enabled": true, "vars": vars}}}),
        );
        return (package_vars, Value::Object(inputs));
    }
    let ds = package
        .data_stream(test.data_stream.as_deref().unwrap())
        .unwrap();
    let input = input
        .map(str::to_owned)
        .unwrap_or_else(|| ds.manifest.streams[0].input.clone());
    let target = package
        .manifest
        .policy_templates
        .iter()
        .find(|t| {
            t.inputs.iter().any(|i| i.input_type == input)
                && t.data_streams
                    .as_ref()
                    .is_none_or(|d| d.is_empty() || d.contains(&ds.folder))
        })
        .unwrap();
    let mut inputs = Map::new();
    for t in &package.manifest.policy_templates {
        for ti in &t.inputs {
            let key = format!("{}-{}", t.name, ti.input_type);
            let mut streams = Map::new();
            for other in package.template_data_streams(t) {
                if other.stream(&ti.input_type).is_some() {
                    streams.insert(other.dataset.clone(), json!({"enabled": false}));
                }
            }
            if t.name == target.name && ti.input_type == input {
                let stream = ds.stream(&input).unwrap();
                streams.insert(
                    ds.dataset.clone(),
                    json!({"enabled": true, "vars": pick(&stream.vars)}),
                );
                inputs.insert(
                    key,
                    json!({"enabled": true, "vars": pick(&ti.vars), "streams": streams}),
                );
            } else {
                inputs.insert(key, json!({"enabled": false, "streams": streams}));
            }
        }
    }
    (package_vars, Value::Object(inputs))
}

fn run(package: &Package, test: &PolicyTest) -> Value {
    let (vars, inputs) = request_for(package, test);
    let mut n = 0;
    let resolved = package
        .resolve_policy(
            PolicyRequest {
                vars: vars.as_ref(),
                inputs: Some(&inputs),
            },
            None,
            &[],
            &mut || {
                n += 1;
                format!("secret{n}")
            },
        )
        .unwrap_or_else(|e| panic!("{}: {}: {}", test.name, e.field, e.message));
    let pp = PackagePolicy {
        id: "a1b2c3d4-e5f6-4789-abcd-0123456789ab".into(),
        name: format!("{}-{}-12345", test.name, package.name()),
        description: None,
        policy_id: "policy".into(),
        package: flotilla_domain::package_policy::PackageRef {
            name: package.name().into(),
            version: package.version().into(),
            title: Some(package.manifest.title.clone()),
        },
        namespace: None,
        vars: resolved.vars,
        inputs: resolved.inputs,
        cloud_connector_id: None,
        secret_references: resolved.secret_references,
        created_at: Default::default(),
        updated_at: Default::default(),
    };
    let hosts = vec!["https://es.example:9200".to_owned()];
    let compiled = compile(
        &Target {
            policy_namespace: "ep",
            revision: 2,
            output_id: "default",
            output_hosts: &hosts,
        },
        &[(&pp, Some(package))],
    );
    let mut policy = Map::new();
    policy.insert("inputs".into(), Value::Array(compiled.inputs));
    policy.insert(
        "output_permissions".into(),
        json!({ "default": compiled.permissions }),
    );
    policy.insert(
        "secret_references".into(),
        serde_json::to_value(&compiled.secret_references).unwrap(),
    );
    policy.extend(compiled.otel);
    // Kibana's YAML download names secrets by position.
    let mut text = serde_json::to_string(&Value::Object(policy)).unwrap();
    for (i, r) in compiled.secret_references.iter().enumerate() {
        text = text.replace(
            &format!("$co.elastic.secret{{{}}}", r.id),
            &format!("${{SECRET_{i}}}"),
        );
    }
    serde_json::from_str(&text).unwrap()
}

// ---- elastic-package's normalisation (policyEntryFilters, normalize.go) ----

fn remove_path(v: &mut Value, path: &[&str]) {
    match path {
        [] => {}
        [last] => {
            if let Value::Object(m) = v {
                m.remove(*last);
            }
        }
        [first, rest @ ..] => {
            if let Some(child) = v.get_mut(*first) {
                remove_path(child, rest);
            }
        }
    }
}

fn is_uuid_like(k: &str) -> bool {
    let parts: Vec<&str> = k.split('-').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            p.len() >= 4
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn normalise(mut p: Value) -> Value {
    for k in [
        "id",
        "revision",
        "agent",
        "fleet",
        "outputs",
        "signed",
        "namespaces",
    ] {
        remove_path(&mut p, &[k]);
    }
    if let Some(Value::Array(inputs)) = p.get_mut("inputs") {
        for input in inputs {
            for path in [
                &["id"][..],
                &["package_policy_id"],
                &["revision"],
                &["meta", "package", "version"],
                &["meta", "package", "policy_template"],
                &["meta", "package", "release"],
            ] {
                remove_path(input, path);
            }
            if let Some(Value::String(name)) = input.get_mut("name") {
                if let Some((base, digits)) = name.rsplit_once('-') {
                    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                        *name = base.to_owned();
                    }
                }
            }
            if let Some(Value::Array(streams)) = input.get_mut("streams") {
                for s in streams {
                    for path in [
                        &["id"][..],
                        &["data_stream", "type"],
                        &["data_stream", "elasticsearch", "dynamic_dataset"],
                        &["data_stream", "elasticsearch", "dynamic_namespace"],
                    ] {
                        remove_path(s, path);
                    }
                    if s.pointer("/data_stream/elasticsearch")
                        .and_then(Value::as_object)
                        .is_some_and(|m| m.is_empty())
                    {
                        remove_path(s, &["data_stream", "elasticsearch"]);
                    }
                }
            }
        }
    }
    if let Some(Value::Array(refs)) = p.get_mut("secret_references") {
        for r in refs {
            remove_path(r, &["id"]);
        }
    }
    if let Some(Value::Object(exporters)) = p.get_mut("exporters") {
        for e in exporters.values_mut() {
            remove_path(e, &["auth"]);
            if let Some(Value::Array(endpoints)) = e.get_mut("endpoints") {
                for ep in endpoints {
                    if ep
                        .as_str()
                        .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
                    {
                        *ep = json!("https://elasticsearch:9200");
                    }
                }
            }
        }
    }
    if let Some(Value::Object(perms)) = p.pointer_mut("/output_permissions/default") {
        let keys: Vec<String> = perms.keys().filter(|k| is_uuid_like(k)).cloned().collect();
        for k in keys {
            let v = perms.remove(&k).unwrap();
            perms.insert("uuid-for-permissions-on-related-indices".into(), v);
        }
    }
    canonical_otel(&mut p);
    p
}

fn canonical_otel(p: &mut Value) {
    let Value::Object(root) = p else { return };
    if let Some(Value::Object(c)) = root.get_mut("connectors") {
        if let Some(v) = c.remove("forward") {
            c.insert("forward/_bare".into(), v);
        }
    }
    if let Some(Value::Object(pipes)) = root.get_mut("service").and_then(|s| s.get_mut("pipelines"))
    {
        let bare: Vec<String> = pipes.keys().filter(|k| !k.contains('/')).cloned().collect();
        for k in bare {
            let v = pipes.remove(&k).unwrap();
            pipes.insert(format!("{k}/_bare"), v);
        }
        for body in pipes.values_mut() {
            for list in ["receivers", "exporters"] {
                if let Some(Value::Array(ids)) = body.get_mut(list) {
                    for id in ids {
                        if id == "forward" {
                            *id = json!("forward/_bare");
                        }
                    }
                }
            }
        }
    }
    let mut mapping: std::collections::BTreeMap<String, String> = Default::default();
    let sections = [
        "extensions",
        "receivers",
        "processors",
        "connectors",
        "exporters",
    ];
    let mut maps: Vec<Option<Map<String, Value>>> = sections
        .iter()
        .map(|s| root.get(*s).and_then(Value::as_object).cloned())
        .collect();
    maps.push(
        root.get("service")
            .and_then(|s| s.get("pipelines"))
            .and_then(Value::as_object)
            .cloned(),
    );
    for m in maps.into_iter().flatten() {
        // Ids already mapped (earlier sections) count in their new form.
        let mut keys: Vec<(String, &String)> = m
            .iter()
            .filter(|(k, _)| k.contains('/'))
            .map(|(k, v)| {
                let mut v = v.clone();
                apply(&mut v, &mapping);
                (serde_json::to_string(&v).unwrap(), k)
            })
            .collect();
        keys.sort();
        for (i, (_, k)) in keys.into_iter().enumerate() {
            let ty = k
                .split('/')
                .next()
                .filter(|t| !t.is_empty())
                .unwrap_or("component");
            mapping.insert(k.clone(), format!("{ty}/componentid-{i}"));
        }
    }
    fn apply(v: &mut Value, mapping: &std::collections::BTreeMap<String, String>) {
        match v {
            Value::Object(m) if m.keys().any(|k| k.contains('/')) => {
                let old = std::mem::take(m);
                for (k, mut child) in old {
                    apply(&mut child, mapping);
                    m.insert(mapping.get(&k).cloned().unwrap_or(k), child);
                }
            }
            Value::Object(m) => m.values_mut().for_each(|c| match c {
                Value::String(s) => {
                    if let Some(n) = mapping.get(s.as_str()) {
                        *s = n.clone();
                    }
                }
                other => apply(other, mapping),
            }),
            Value::Array(a) => a.iter_mut().for_each(|c| match c {
                Value::String(s) => {
                    if let Some(n) = mapping.get(s.as_str()) {
                        *s = n.clone();
                    }
                }
                other => apply(other, mapping),
            }),
            _ => {}
        }
    }
    apply(p, &mapping);
}

#[test]
fn every_shared_package_installs_and_matches_kibana() {
    let root = shared_packages();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 7,
        "expected the shared packages, found {dirs:?}"
    );
    let mut compared = 0;
    let mut failures = Vec::new();
    for dir in dirs {
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        let files = read_dir(&dir).unwrap();
        let package =
            Package::from_files(files).unwrap_or_else(|e| panic!("{folder} does not install: {e}"));
        flotilla_packages::archive::check_folder_name(&folder, &package).unwrap();
        // Every package renders with its defaults.
        let defaults =
            package.resolve_policy(PolicyRequest::default(), None, &[], &mut || "s".into());
        if let Err(e) = &defaults {
            // Required variables without defaults are the only acceptable refusal.
            assert!(
                e.message.ends_with("is required"),
                "{folder}: {}: {}",
                e.field,
                e.message
            );
        }
        for test in policy_tests(&dir) {
            let got = normalise(run(&package, &test));
            let want = normalise(test.expected.clone());
            compared += 1;
            if got != want {
                failures.push(format!(
                    "{folder} {}:\n--- want\n{}\n--- got\n{}",
                    test.name,
                    serde_json::to_string_pretty(&want).unwrap(),
                    serde_json::to_string_pretty(&got).unwrap()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(compared, 5, "every policy test was compared");
    println!("{compared} Kibana policy tests matched");
}

#[test]
fn aws_elb_logs_stream_with_no_declared_input_is_never_created() {
    let package =
        Package::from_files(read_dir(&shared_packages().join("aws-999.999.999")).unwrap()).unwrap();
    let inputs = package.default_inputs();
    let elb: Vec<_> = inputs
        .iter()
        .filter(|i| i.policy_template.as_deref() == Some("elb"))
        .collect();
    assert_eq!(elb.len(), 1);
    assert_eq!(elb[0].input_type, "aws/metrics");
    assert!(
        elb[0].streams.is_empty(),
        "the aws-s3 stream of elb_logs belongs to no input"
    );
    assert!(!inputs.iter().any(|i| i.input_type == "aws-s3"));
}
