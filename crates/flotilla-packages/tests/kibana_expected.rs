//! Every package in `../shared/packages/` installs, and every policy test
//! there (`_dev/test/policy/test-*.yml`) compiles to exactly the agent
//! policy Kibana produced (`test-*.expected`), both normalised the way
//! elastic-package's policy test runner normalises them.
//!
//! The packages are Elastic's (test data, read in place, never copied).

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use flotilla_domain::package_policy::PackagePolicy;
use flotilla_packages::archive::read_dir;
use flotilla_packages::compile::{compile, Target};
use flotilla_packages::policy::PolicyRequest;
use flotilla_packages::Package;
use flotilla_testkit::kibana::{
    name_secrets_by_position, normalise, policy_tests, request_for, shared_packages, PolicyTest,
};

fn run(package: &Package, test: &PolicyTest) -> Value {
    let info = serde_json::to_value(package.info()).unwrap();
    let (vars, inputs) = request_for(&info, test);
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
    name_secrets_by_position(Value::Object(policy))
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
