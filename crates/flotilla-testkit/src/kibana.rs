//! Comparing Flotilla's agent policies with Kibana's, as elastic-package's
//! policy test runner does: the tests in the shared packages
//! (`_dev/test/policy/test-*.yml` and their `.expected`), the package
//! policy request elastic-package builds from one, and the normalisation
//! applied to both sides before they are compared.
//!
//! Everything works on JSON (a package as `GET
//! /api/fleet/epm/packages/{name}/{version}` shows it), so the same code
//! serves the in-process test and the end-to-end one.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The shared material beside the project (`../shared`):
/// `FLOTILLA_SHARED_DIR` when set, else a `shared/` beside the checkout or
/// one of its parents, else `/work/shared` (where this machine keeps it, for
/// clones made elsewhere).
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared"))
        .find(|d| d.join("packages").is_dir())
        .unwrap_or_else(|| PathBuf::from("/work/shared"))
}

/// The shared packages (Elastic's, read in place, never copied).
pub fn shared_packages() -> PathBuf {
    let root = shared_dir().join("packages");
    assert!(
        root.is_dir(),
        "the shared test packages are missing at {} (set FLOTILLA_SHARED_DIR to the shared folder)",
        root.display()
    );
    root
}

/// YAML as Kibana's js-yaml reads it, into JSON (the test files only).
fn yaml(text: &str) -> Value {
    serde_saphyr::from_str_with_options(
        text,
        serde_saphyr::options! { strict_booleans: true, with_snippet: false },
    )
    .expect("the shared test files are YAML")
}

pub struct PolicyTest {
    pub name: String,
    pub data_stream: Option<String>,
    pub config: Map<String, Value>,
    pub expected: Value,
}

pub fn policy_tests(dir: &Path) -> Vec<PolicyTest> {
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
            let config = yaml(&std::fs::read_to_string(&path).unwrap());
            let expected_path = tests_dir.join(format!("{name}.expected"));
            let expected = yaml(&std::fs::read_to_string(&expected_path).unwrap());
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

fn arr<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn s<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The package policy request elastic-package sends for a test
/// (`BuildInputPackagePolicy` / `BuildIntegrationPackagePolicy`), for a
/// package as the EPM API shows it: `(vars, inputs)`.
pub fn request_for(info: &Value, test: &PolicyTest) -> (Option<Map<String, Value>>, Value) {
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
    let pick = |decls: &[Value]| -> Map<String, Value> {
        decls
            .iter()
            .filter_map(|d| {
                user.get(s(d, "name"))
                    .map(|v| (s(d, "name").to_owned(), v.clone()))
            })
            .collect()
    };
    let package_vars = pick(arr(info, "vars"));
    let package_vars = (!package_vars.is_empty()).then_some(package_vars);
    let name = s(info, "name");
    let templates = arr(info, "policy_templates");
    if s(info, "type") == "input" {
        let input = input
            .unwrap_or_else(|| s(&templates[0], "input"))
            .to_owned();
        let t = templates
            .iter()
            .find(|t| s(t, "input") == input)
            .expect("a template for the input");
        let mut vars = pick(arr(t, "vars"));
        let dataset = user
            .get("data_stream.dataset")
            .cloned()
            .unwrap_or_else(|| json!(s(t, "name")));
        vars.insert("data_stream.dataset".into(), dataset);
        if let Some(ty) = user.get("data_stream.type") {
            vars.insert("data_stream.type".into(), ty.clone());
        }
        let stream_key = format!("{name}.{}", s(t, "name"));
        if legacy {
            let wrapped: Map<String, Value> = vars
                .iter()
                .map(|(k, v)| (k.clone(), json!({ "value": v })))
                .collect();
            let inputs = json!([{
                "type": input, "policy_template": s(t, "name"), "enabled": true,
                "streams": [{"enabled": true,
                             "data_stream": {"type": s(t, "type"), "dataset": stream_key},
                             "vars": wrapped}]
            }]);
            return (package_vars, inputs);
        }
        let mut inputs = Map::new();
        for other in templates {
            inputs.insert(
                format!("{}-{}", s(other, "name"), s(other, "input")),
                json!({"enabled": false}),
            );
        }
        inputs.insert(
            format!("{}-{input}", s(t, "name")),
            json!({"enabled": true, "streams": {stream_key: {"enabled": true, "vars": vars}}}),
        );
        return (package_vars, Value::Object(inputs));
    }
    let folder = test
        .data_stream
        .as_deref()
        .expect("an integration test names its data stream");
    let data_streams = arr(info, "data_streams");
    let ds = data_streams
        .iter()
        .find(|d| s(d, "folder") == folder)
        .expect("the data stream");
    let input = input
        .unwrap_or_else(|| s(&arr(ds, "streams")[0], "input"))
        .to_owned();
    let covers = |t: &Value, d: &Value| match t.get("data_streams").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().any(|x| x.as_str() == Some(s(d, "folder"))),
        _ => true,
    };
    let target = templates
        .iter()
        .find(|t| arr(t, "inputs").iter().any(|i| s(i, "type") == input) && covers(t, ds))
        .expect("a template with the input");
    let mut inputs = Map::new();
    for t in templates {
        for ti in arr(t, "inputs") {
            let ty = s(ti, "type");
            let key = format!("{}-{ty}", s(t, "name"));
            let mut streams = Map::new();
            for other in data_streams.iter().filter(|d| covers(t, d)) {
                if arr(other, "streams").iter().any(|st| s(st, "input") == ty) {
                    streams.insert(s(other, "dataset").to_owned(), json!({"enabled": false}));
                }
            }
            if s(t, "name") == s(target, "name") && ty == input {
                let stream = arr(ds, "streams")
                    .iter()
                    .find(|st| s(st, "input") == input)
                    .expect("the stream");
                streams.insert(
                    s(ds, "dataset").to_owned(),
                    json!({"enabled": true, "vars": pick(arr(stream, "vars"))}),
                );
                inputs.insert(
                    key,
                    json!({"enabled": true, "vars": pick(arr(ti, "vars")), "streams": streams}),
                );
            } else {
                inputs.insert(key, json!({"enabled": false, "streams": streams}));
            }
        }
    }
    (package_vars, Value::Object(inputs))
}

/// Kibana's YAML download names secrets by their position in
/// `secret_references`: `$co.elastic.secret{id}` becomes `${SECRET_<n>}`.
pub fn name_secrets_by_position(policy: Value) -> Value {
    let refs: Vec<String> = arr(&policy, "secret_references")
        .iter()
        .map(|r| s(r, "id").to_owned())
        .collect();
    let mut text = serde_json::to_string(&policy).unwrap();
    for (i, id) in refs.iter().enumerate() {
        text = text.replace(
            &format!("$co.elastic.secret{{{id}}}"),
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

/// elastic-package's `policyEntryFilters` and `normalizePolicyToCanonical`.
pub fn normalise(mut p: Value) -> Value {
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
