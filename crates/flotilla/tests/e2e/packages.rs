//! Packages in Elastic's format, end to end: installed by upload (zip and
//! gzip'd tar, API and CLI) and from `packages_dir`, shown, upgraded to,
//! removed; every shared Kibana policy test reproduced through the API;
//! secrets sealed and delivered only to agents; one package set for every
//! instance on PostgreSQL.

use std::path::Path;

use serde_json::{json, Value};

use flotilla_testkit::kibana::{
    name_secrets_by_position, normalise, policy_tests, request_for, shared_packages,
};

use crate::support::{assert_error, Engine, Server};

const PACKAGES: &str = "/api/fleet/epm/packages";

/// A gzip'd tar of a package folder, as `elastic-package build` makes them.
pub fn tar_gz_of(dir: &Path) -> Vec<u8> {
    let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    t.append_dir_all(&folder, dir).unwrap();
    t.into_inner().unwrap().finish().unwrap()
}

pub fn zip_of(dir: &Path) -> Vec<u8> {
    flotilla_packages::archive::zip_dir(dir).unwrap()
}

async fn upload(s: &Server, content_type: &str, bytes: Vec<u8>) -> (u16, Value) {
    s.raw(reqwest::Method::POST, PACKAGES, content_type, bytes)
        .await
}

/// The full policy as Kibana's download shows it, for comparison.
fn as_kibana(mut full: Value, output_id: &str) -> Value {
    let obj = full.as_object_mut().unwrap();
    for k in ["id", "name", "namespace", "revision", "outputs"] {
        obj.remove(k);
    }
    // Kibana calls the default output `default`.
    let perms = obj["output_permissions"][output_id].clone();
    obj.insert("output_permissions".into(), json!({ "default": perms }));
    let text = serde_json::to_string(&full).unwrap().replace(
        &format!("\"use_output\":\"{output_id}\""),
        "\"use_output\":\"default\"",
    );
    name_secrets_by_position(serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn every_shared_package_installs_by_upload_and_compiles_as_kibana_does() {
    let s = Server::sqlite();
    let mut dirs: Vec<_> = std::fs::read_dir(shared_packages())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut compared = 0;
    for (i, dir) in dirs.iter().enumerate() {
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        // Alternate the two archive kinds Kibana accepts.
        let (st, body) = if i % 2 == 0 {
            upload(&s, "application/zip", zip_of(dir)).await
        } else {
            upload(&s, "application/gzip", tar_gz_of(dir)).await
        };
        assert_eq!(st, 200, "{folder}: {body}");
        assert_eq!(
            format!(
                "{}-{}",
                body["_meta"]["name"].as_str().unwrap(),
                body["_meta"]["version"].as_str().unwrap()
            ),
            folder
        );
        assert_eq!(body["_meta"]["already_installed"], false);
        let (name, version) = folder.rsplit_once('-').unwrap();
        let (st, info) = s.get(&format!("{PACKAGES}/{name}/{version}")).await;
        assert_eq!(st, 200, "{info}");
        let info = &info["item"];
        assert_eq!(info["install_source"], "upload");
        assert!(
            info["policy_templates"]
                .as_array()
                .is_some_and(|t| !t.is_empty()),
            "{info}"
        );

        for test in policy_tests(dir) {
            compared += 1;
            let policy_id = format!("ep-{compared}");
            let (st, _) = s
                .post(
                    "/api/fleet/agent_policies",
                    json!({"id": policy_id, "name": policy_id, "namespace": "ep"}),
                )
                .await;
            assert_eq!(st, 200);
            let (vars, inputs) = request_for(info, &test);
            let mut body = json!({
                "name": format!("{}-{name}-12345", test.name),
                "policy_id": policy_id,
                "package": {"name": name, "version": version},
                "inputs": inputs,
            });
            if let Some(vars) = vars {
                body["vars"] = Value::Object(vars);
            }
            let (st, pp) = s.post("/api/fleet/package_policies", body).await;
            assert_eq!(st, 200, "{folder} {}: {pp}", test.name);
            let (_, full) = s
                .get(&format!("/api/fleet/agent_policies/{policy_id}/full"))
                .await;
            let got = normalise(as_kibana(full["item"].clone(), "fleet-default-output"));
            let want = normalise(test.expected.clone());
            assert_eq!(
                got,
                want,
                "{folder} {}:\n--- want\n{}\n--- got\n{}",
                test.name,
                serde_json::to_string_pretty(&want).unwrap(),
                serde_json::to_string_pretty(&got).unwrap()
            );
        }
    }
    assert_eq!(compared, 5, "every shared policy test ran");
    // The same upload again is a no-op; the list has every package.
    let (st, again) = upload(&s, "application/zip", zip_of(&dirs[0])).await;
    assert_eq!(st, 200);
    assert_eq!(again["_meta"]["already_installed"], true);
    let (_, list) = s.get(PACKAGES).await;
    let listed: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}-{} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["install_source"].as_str().unwrap()
            )
        })
        .collect();
    for dir in &dirs {
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(listed.contains(&format!("{folder} upload")), "{listed:?}");
    }
    for builtin in [
        "log-2.3.0 builtin",
        "nginx-1.20.0 builtin",
        "system-1.60.0 builtin",
    ] {
        assert!(listed.iter().any(|l| l == builtin), "{listed:?}");
    }
}

#[tokio::test]
async fn install_upgrade_and_remove_through_the_cli_and_api() {
    let s = Server::sqlite();
    let nginx_dir = shared_packages().join("nginx-999.999.999");
    let out = s.cli(&["package", "install", nginx_dir.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(installed["_meta"]["version"], "999.999.999");
    let tgz = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tgz.path(),
        tar_gz_of(&shared_packages().join("sql_input-0.2.0")),
    )
    .unwrap();
    let out = s.cli(&["package", "install", tgz.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&s.cli(&["package", "list"]).stdout).into_owned();
    assert!(
        list.contains("sql_input") && list.contains("999.999.999") && list.contains("builtin"),
        "{list}"
    );
    let shown: Value =
        serde_json::from_slice(&s.cli(&["package", "show", "nginx", "--json"]).stdout).unwrap();
    assert_eq!(shown["version"], "999.999.999", "the newest version");
    assert_eq!(shown["data_streams"].as_array().unwrap().len(), 3);

    // An integration on the built-in version, with a value of its own.
    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "web", "name": "web"}),
    )
    .await;
    let (st, pp) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "n", "policy_id": "web", "package": {"name": "nginx", "version": "1.20.0"},
                   "inputs": {"nginx-logfile": {"streams": {"nginx.access": {"vars": {"paths": ["/srv/access.log"]}}}}}}),
        )
        .await;
    assert_eq!(st, 200, "{pp}");
    let id = pp["item"]["id"].as_str().unwrap().to_owned();
    // Upgrading keeps the values that still apply.
    let (st, up) = s
        .put(
            &format!("/api/fleet/package_policies/{id}"),
            json!({"package": {"name": "nginx", "version": "999.999.999"}}),
        )
        .await;
    assert_eq!(st, 200, "{up}");
    assert_eq!(up["item"]["package"]["version"], "999.999.999");
    let logfile = up["item"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "logfile")
        .unwrap();
    let access = logfile["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["data_stream"]["dataset"] == "nginx.access")
        .unwrap();
    assert_eq!(access["vars"]["paths"]["value"], json!(["/srv/access.log"]));
    assert_eq!(
        access["compiled_stream"]["paths"],
        json!(["/srv/access.log"])
    );

    // Removal: refused while used, and for built-in packages.
    let out = s.cli(&["package", "remove", "nginx", "999.999.999"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("used by 1 integration") && err.contains("409"),
        "{err}"
    );
    assert_error(
        &s.delete(&format!("{PACKAGES}/system/1.60.0")).await,
        409,
        "built in",
    );
    assert_error(
        &s.delete(&format!("{PACKAGES}/nope/1.0.0")).await,
        404,
        "nope",
    );
    s.delete(&format!("/api/fleet/package_policies/{id}")).await;
    let out = s.cli(&["package", "remove", "nginx", "999.999.999"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_error(
        &s.get(&format!("{PACKAGES}/nginx/999.999.999")).await,
        404,
        "nginx",
    );
    assert_eq!(
        s.get(&format!("{PACKAGES}/nginx")).await.1["item"]["version"],
        "1.20.0"
    );
}

#[tokio::test]
async fn package_policies_are_checked_against_their_package() {
    let s = Server::sqlite();
    s.post("/api/fleet/agent_policies", json!({"id": "p", "name": "p"}))
        .await;
    let create = |body: Value| {
        let mut b = json!({"name": "x", "policy_id": "p", "package": {"name": "system"}});
        b.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        b
    };
    for (body, field) in [
        (json!({"inputs": {"system-nope": {}}}), "inputs.system-nope"),
        (
            json!({"inputs": {"system-logfile": {"streams": {"system.nope": {}}}}}),
            "inputs.system-logfile.streams.system.nope",
        ),
        (
            json!({"inputs": {"system-logfile": {"streams": {"system.auth": {"vars": {"pathz": ["/x"]}}}}}}),
            "vars.pathz",
        ),
        (
            json!({"inputs": {"system-system/metrics": {"streams": {"system.cpu": {"vars": {"period": "ten"}}}}}}),
            "Invalid duration",
        ),
        (
            json!({"inputs": {"system-logfile": {"streams": {"system.auth": {"vars": {"paths": "/x"}}}}}}),
            "expected array",
        ),
        (
            json!({"inputs": {"system-logfile": {"streams": {"system.auth": {"vars": {"paths": []}}}}}}),
            "Paths is required",
        ),
        (json!({"inputs": [{"type": "winlog"}]}), "inputs[0].type"),
        (json!({"vars": {"nope": 1}}), "vars.nope"),
        (
            json!({"package": {"name": "system", "version": "0.0.1"}}),
            "package.name",
        ),
        (json!({"inputs": "logfile"}), "inputs"),
    ] {
        let (st, e) = s
            .post("/api/fleet/package_policies", create(body.clone()))
            .await;
        assert_eq!(st, 400, "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{body}: {e}"
        );
    }
    // The full form with one stream: only it is enabled.
    let (st, pp) = s
        .post(
            "/api/fleet/package_policies",
            create(json!({"inputs": [{"type": "system/metrics", "streams": [
                {"data_stream": {"type": "metrics", "dataset": "system.cpu"}, "vars": {"period": {"value": "30s", "type": "duration"}}}]}]})),
        )
        .await;
    assert_eq!(st, 200, "{pp}");
    let (_, full) = s.get("/api/fleet/agent_policies/p/full").await;
    let inputs = full["item"]["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    assert_eq!(inputs[0]["type"], "system/metrics");
    assert_eq!(
        inputs[0]["meta"]["package"],
        json!({"name": "system", "version": "1.60.0", "policy_template": "system"})
    );
    assert_eq!(
        inputs[0]["streams"],
        json!([{
        "id": format!("system/metrics-system.cpu-{}", pp["item"]["id"].as_str().unwrap()),
        "data_stream": {"type": "metrics", "dataset": "system.cpu"},
        "metricsets": ["cpu"], "period": "30s"}])
    );
}

#[tokio::test]
async fn secret_variables_are_sealed_and_reach_only_the_agent() {
    let s = Server::sqlite();
    s.post("/api/fleet/agent_policies", json!({"id": "p", "name": "p"}))
        .await;
    let (st, _) = upload(
        &s,
        "application/zip",
        zip_of(&shared_packages().join("system-1.53.0")),
    )
    .await;
    assert_eq!(st, 200);
    const SECRET: &str = "hunter2-splunk-password";
    let (st, pp) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "splunk", "policy_id": "p", "package": {"name": "system", "version": "1.53.0"},
                   "inputs": {"system-httpjson": {"enabled": true,
                       "vars": {"url": "https://splunk:8089", "username": "u", "password": SECRET},
                       "streams": {"system.security": {"enabled": true}}}}}),
        )
        .await;
    assert_eq!(st, 200, "{pp}");
    assert!(!pp.to_string().contains(SECRET), "{pp}");
    let id = pp["item"]["id"].as_str().unwrap();
    let (_, got) = s.get(&format!("/api/fleet/package_policies/{id}")).await;
    assert!(!got.to_string().contains(SECRET));
    let httpjson = got["item"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "httpjson")
        .unwrap();
    let secret_ref = &httpjson["vars"]["password"]["value"];
    assert_eq!(secret_ref["isSecretRef"], true, "{httpjson}");
    let secret_id = secret_ref["id"].as_str().unwrap();
    let (_, full) = s.get("/api/fleet/agent_policies/p/full").await;
    let text = full.to_string();
    assert!(!text.contains(SECRET));
    assert!(
        text.contains(&format!("$co.elastic.secret{{{secret_id}}}")),
        "{text}"
    );
    assert_eq!(
        full["item"]["secret_references"],
        json!([{"id": secret_id}])
    );

    // Another integration cannot name that secret to have it delivered.
    let (st, e) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "thief", "policy_id": "p", "package": {"name": "system", "version": "1.53.0"},
                   "inputs": {"system-httpjson": {"enabled": true,
                       "vars": {"url": "https://splunk:8089", "password": "mine",
                                "username": format!("$co.elastic.secret{{{secret_id}}}")},
                       "streams": {"system.security": {"enabled": true}}}}}),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("does not hold"),
        "{e}"
    );

    // An update that leaves the password alone keeps the same secret.
    let (st, upd) = s
        .put(
            &format!("/api/fleet/package_policies/{id}"),
            json!({"description": "kept"}),
        )
        .await;
    assert_eq!(st, 200, "{upd}");
    assert_eq!(upd["item"]["secret_references"], json!([{"id": secret_id}]));

    // The agent gets the value.
    let (_, key) = s
        .post("/api/fleet/enrollment_api_keys", json!({"policy_id": "p"}))
        .await;
    let agent = s.enroll(key["item"]["api_key"].as_str().unwrap()).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let actions = r.body["actions"].as_array().unwrap();
    let policy = &actions
        .iter()
        .find(|a| a["type"] == "POLICY_CHANGE")
        .unwrap()["data"]["policy"];
    let stream = &policy["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "httpjson")
        .unwrap()["streams"][0];
    assert_eq!(stream["auth.basic.password"], SECRET, "{stream}");
    // Nothing on disk holds it in the clear.
    for entry in std::fs::read_dir(&s.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "{}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn packages_dir_is_installed_at_start_and_a_bad_package_stops_it() {
    let s = Server::builder()
        .env("FLOTILLA_PACKAGES_DIR", shared_packages().to_str().unwrap())
        .start()
        .unwrap();
    let (_, list) = s.get(PACKAGES).await;
    let from_dir = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["install_source"] == "directory")
        .count();
    assert_eq!(from_dir, 7, "{list}");
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken-1.0.0");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("manifest.yml"),
        "format_version: 3.0.0\nname: broken\nversion: 1.0.0\npolicy_templates: []\n",
    )
    .unwrap();
    let out = crate::support::command()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("FLOTILLA_PACKAGES_DIR", dir.path())
        .env("FLOTILLA_ADMIN_API_KEY", "x".repeat(40))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken-1.0.0") && err.contains("manifest.yml") && err.contains("title"),
        "{err}"
    );
}

/// Two instances on one PostgreSQL database share one package set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_see_the_same_packages() {
    let Some(cluster) = flotilla_testkit::postgres() else {
        return;
    };
    let url = cluster.create_database();
    let a = Server::builder()
        .engine(Engine::Postgres)
        .database_url(&url)
        .start()
        .unwrap();
    let b = Server::builder()
        .engine(Engine::Postgres)
        .database_url(&url)
        .start()
        .unwrap();
    let (st, body) = upload(
        &a,
        "application/gzip",
        tar_gz_of(&shared_packages().join("aws-999.999.999")),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, info) = b.get(&format!("{PACKAGES}/aws/999.999.999")).await;
    assert_eq!(st, 200, "{info}");
    b.post(
        "/api/fleet/agent_policies",
        json!({"id": "cloud", "name": "cloud"}),
    )
    .await;
    let (st, pp) = b
        .post(
            "/api/fleet/package_policies",
            json!({"name": "ec2", "policy_id": "cloud", "package": {"name": "aws"},
                   "inputs": {"ec2-aws/metrics": {"streams": {"aws.ec2_metrics": {"vars": {"instance_id": "i-1"}}}},
                              "elb-aws/metrics": {"enabled": false}, "sns-aws/metrics": {"enabled": false}}}),
        )
        .await;
    assert_eq!(st, 200, "{pp}");
    // A's view of the policy uses the package B resolved it with.
    let (_, full) = a.get("/api/fleet/agent_policies/cloud/full").await;
    let inputs = full["item"]["inputs"].as_array().unwrap();
    assert!(
        inputs.iter().any(|i| i["meta"]["package"]["name"] == "aws"),
        "{inputs:?}"
    );
    // Removing through B is seen by A.
    assert_error(
        &a.delete(&format!("{PACKAGES}/aws/999.999.999")).await,
        409,
        "used by",
    );
    b.delete(&format!(
        "/api/fleet/package_policies/{}",
        pp["item"]["id"].as_str().unwrap()
    ))
    .await;
    let (st, _) = b.delete(&format!("{PACKAGES}/aws/999.999.999")).await;
    assert_eq!(st, 200);
    let (_, list) = a.get(PACKAGES).await;
    assert!(!list.to_string().contains("999.999.999"), "{list}");
}

#[tokio::test]
async fn a_package_asking_for_more_than_the_ceiling_is_refused_when_used() {
    let s = Server::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("greedy-1.0.0");
    std::fs::create_dir_all(pkg.join("data_stream/d/agent/stream")).unwrap();
    std::fs::write(
        pkg.join("manifest.yml"),
        "format_version: 3.0.0\nname: greedy\ntitle: Greedy\nversion: 1.0.0\nelasticsearch:\n  privileges:\n    cluster: [manage_security]\npolicy_templates:\n  - name: t\n    title: T\n    inputs: [{type: x, title: X}]\n",
    )
    .unwrap();
    std::fs::write(
        pkg.join("data_stream/d/manifest.yml"),
        "type: logs\ntitle: D\nstreams:\n  - {input: x, title: X}\n",
    )
    .unwrap();
    std::fs::write(
        pkg.join("data_stream/d/agent/stream/stream.yml.hbs"),
        "a: 1\n",
    )
    .unwrap();
    let (st, body) = upload(&s, "application/zip", zip_of(&pkg)).await;
    assert_eq!(st, 200, "{body}");
    s.post("/api/fleet/agent_policies", json!({"id": "p", "name": "p"}))
        .await;
    let r = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "g", "policy_id": "p", "package": {"name": "greedy"}}),
        )
        .await;
    assert_error(&r, 400, "manage_security on cluster");
}
