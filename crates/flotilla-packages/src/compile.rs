//! A policy's integrations compiled into what the agent receives, as
//! Kibana's full agent policy has them: `inputs[]`
//! (`storedPackagePoliciesToAgentInputs`), `output_permissions`
//! (`storedPackagePoliciesToAgentPermissions`), `secret_references`, and
//! `otelcol` inputs turned into top-level collector configuration.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use flotilla_domain::full_policy::CompiledIntegrations;
use flotilla_domain::package_policy::{Input, PackagePolicy, Stream};
use flotilla_domain::permissions::{
    IndexPermission, Permissions, RoleDescriptor, AGENT_CHECKS_ROLE, AGENT_MONITORING_ROLE,
    DEFAULT_STREAM_PRIVILEGES,
};

use crate::package::Package;
use crate::policy::TYPE_VAR;

/// Where the compiled policy goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub policy_namespace: &'a str,
    pub revision: i64,
    pub output_id: &'a str,
    pub output_hosts: &'a [String],
}

/// The input type Kibana lifts out of `inputs` into collector config.
pub const OTEL_INPUT: &str = "otelcol";

/// Compile integrations, each with its package when it is installed
/// (without it, the stored compiled streams are used as they are).
pub fn compile(
    target: &Target<'_>,
    integrations: &[(&PackagePolicy, Option<&Package>)],
) -> CompiledIntegrations {
    let mut inputs = Vec::new();
    let mut otel_inputs = Vec::new();
    let mut roles = BTreeMap::new();
    roles.insert(
        AGENT_CHECKS_ROLE.to_owned(),
        RoleDescriptor {
            cluster: vec!["monitor".to_owned()],
            indices: None,
        },
    );
    roles.insert(
        AGENT_MONITORING_ROLE.to_owned(),
        RoleDescriptor {
            cluster: vec![],
            indices: Some(vec![]),
        },
    );
    let mut secrets = BTreeSet::new();
    for (pp, package) in integrations {
        let namespace = pp.effective_namespace(target.policy_namespace);
        for input in pp.inputs.iter().filter(|i| i.enabled) {
            let full = full_input(target, pp, input, namespace);
            if input.input_type == OTEL_INPUT {
                otel_inputs.push(full);
            } else {
                inputs.push(full);
            }
        }
        roles.insert(pp.id.clone(), role_for(pp, *package, namespace));
        secrets.extend(pp.secret_references.iter().cloned());
    }
    let otel = if otel_inputs.is_empty() {
        Map::new()
    } else {
        otel_config(&otel_inputs, target)
    };
    CompiledIntegrations {
        inputs,
        permissions: Permissions(roles),
        secret_references: secrets.into_iter().collect(),
        otel,
    }
}

fn input_id(input: &Input, pp_id: &str) -> String {
    match &input.policy_template {
        Some(t) => format!("{}-{t}-{pp_id}", input.input_type),
        None => format!("{}-{pp_id}", input.input_type),
    }
}

fn full_input(target: &Target<'_>, pp: &PackagePolicy, input: &Input, namespace: &str) -> Value {
    let mut package = Map::new();
    package.insert("name".into(), json!(pp.package.name));
    package.insert("version".into(), json!(pp.package.version));
    if let Some(t) = &input.policy_template {
        package.insert("policy_template".into(), json!(t));
    }
    let mut out = Map::new();
    out.insert("id".into(), json!(input_id(input, &pp.id)));
    out.insert("revision".into(), json!(target.revision));
    out.insert("name".into(), json!(pp.name));
    out.insert("type".into(), json!(input.input_type));
    out.insert("data_stream".into(), json!({ "namespace": namespace }));
    out.insert("use_output".into(), json!(target.output_id));
    out.insert("package_policy_id".into(), json!(pp.id));
    // An input-level template's keys land after (and so over) these.
    if let Some(Value::Object(compiled)) = &input.compiled_input {
        for (k, v) in compiled {
            out.insert(k.clone(), v.clone());
        }
    }
    if !input.streams.is_empty() {
        let streams: Vec<Value> = input
            .streams
            .iter()
            .filter(|s| s.enabled)
            .map(|s| full_stream(pp, input, s))
            .collect();
        out.insert("streams".into(), Value::Array(streams));
    }
    out.insert("meta".into(), json!({ "package": package }));
    Value::Object(out)
}

fn full_stream(pp: &PackagePolicy, input: &Input, s: &Stream) -> Value {
    let mut out = Map::new();
    out.insert(
        "id".into(),
        json!(format!(
            "{}-{}-{}",
            input.input_type, s.data_stream.dataset, pp.id
        )),
    );
    let mut data_stream = match serde_json::to_value(&s.data_stream) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // Integrations stored before packages were installable have no
    // compiled stream: their variables are the stream's configuration.
    let compiled = s.compiled_stream.clone().unwrap_or_else(|| {
        Value::Object(
            s.vars
                .iter()
                .chain(input.vars.iter())
                .chain(pp.vars.iter())
                .filter_map(|(k, v)| v.value.clone().map(|v| (k.clone(), v)))
                .fold(Map::new(), |mut m, (k, v)| {
                    m.entry(k).or_insert(v);
                    m
                }),
        )
    });
    if let Value::Object(compiled) = compiled {
        for (k, v) in compiled {
            if k == "data_stream" {
                if let Value::Object(ds) = v {
                    data_stream.extend(ds);
                }
            } else {
                out.insert(k, v);
            }
        }
    }
    if let Some(Value::String(t)) = s.vars.get(TYPE_VAR).and_then(|v| v.value.as_ref()) {
        if !t.is_empty() {
            data_stream.insert("type".into(), json!(t));
        }
    }
    out.insert("data_stream".into(), Value::Object(data_stream));
    Value::Object(out)
}

/// The role descriptor of one package policy.
fn role_for(pp: &PackagePolicy, package: Option<&Package>, namespace: &str) -> RoleDescriptor {
    let mut indices = Vec::new();
    for input in pp.inputs.iter().filter(|i| i.enabled) {
        for s in input.streams.iter().filter(|s| s.enabled) {
            let es = s.data_stream.elasticsearch.as_ref();
            let flag = |name: &str| {
                es.and_then(|e| e.get(name))
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            };
            let stream_type = match s.vars.get(TYPE_VAR).and_then(|v| v.value.as_ref()) {
                Some(Value::String(t)) if !t.is_empty() => t.clone(),
                _ => s.data_stream.stream_type.clone(),
            };
            let dataset = s
                .compiled_stream
                .as_ref()
                .and_then(|c| c.get("data_stream"))
                .and_then(|d| d.get("dataset"))
                .and_then(Value::as_str)
                .unwrap_or(&s.data_stream.dataset)
                .to_owned();
            let manifest = package.and_then(|p| {
                p.data_streams
                    .iter()
                    .find(|d| d.dataset == s.data_stream.dataset)
                    .map(|d| &d.manifest)
            });
            let hidden = manifest.is_some_and(|m| m.hidden);
            let prefix = manifest.is_some_and(|m| m.dataset_is_prefix);
            let mut name = String::new();
            if hidden {
                name.push('.');
            }
            name.push_str(&stream_type);
            name.push('-');
            if flag("dynamic_dataset") {
                name.push('*');
            } else if prefix {
                name.push_str(&format!("{dataset}.*"));
            } else {
                name.push_str(&dataset);
            }
            if flag("dynamic_namespace") {
                name.push_str("-*");
            } else {
                name.push('-');
                name.push_str(namespace);
            }
            let declared: Vec<String> = es
                .and_then(|e| e.pointer("/privileges/indices"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let privileges = if declared.is_empty() {
                DEFAULT_STREAM_PRIVILEGES
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                declared
            };
            indices.push(IndexPermission {
                names: vec![name],
                privileges,
            });
        }
    }
    let cluster = package
        .and_then(|p| p.manifest.elasticsearch.as_ref())
        .and_then(|e| e.privileges.as_ref())
        .map(|p| p.cluster.clone())
        .unwrap_or_default();
    RoleDescriptor {
        cluster,
        indices: Some(indices),
    }
}

const OTEL_SECTIONS: &[&str] = &[
    "extensions",
    "receivers",
    "processors",
    "connectors",
    "exporters",
];

/// Kibana's `generateOtelcolConfig`: each `otelcol` stream's collector
/// sections, their component ids suffixed with the input and stream ids,
/// a routing transform that sets the data stream, and the policy's output
/// as an `elasticsearch` exporter fed through a `forward` connector.
fn otel_config(inputs: &[Value], target: &Target<'_>) -> Map<String, Value> {
    let mut merged: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut pipelines = Map::new();
    for input in inputs {
        let input_id = input.get("id").and_then(Value::as_str).unwrap_or_default();
        let namespace = input
            .pointer("/data_stream/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        for stream in input
            .get("streams")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let stream_id = stream.get("id").and_then(Value::as_str).unwrap_or_default();
            let suffix = format!("{input_id}-{stream_id}").replace('.', "-");
            let stream_type = stream
                .pointer("/data_stream/type")
                .and_then(Value::as_str)
                .unwrap_or("logs");
            let dataset = stream
                .pointer("/data_stream/dataset")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let rename = |id: &str| format!("{id}/{suffix}");
            for section in OTEL_SECTIONS {
                if let Some(Value::Object(components)) = stream.get(*section) {
                    let target = merged.entry(section).or_default();
                    for (k, v) in components {
                        target.insert(rename(k), v.clone());
                    }
                }
            }
            let routing = format!("transform/{suffix}-routing");
            let statements = |t: &str| {
                json!([
                    format!("set(attributes[\"data_stream.type\"], \"{t}\")"),
                    format!("set(attributes[\"data_stream.dataset\"], \"{dataset}\")"),
                    format!("set(attributes[\"data_stream.namespace\"], \"{namespace}\")"),
                ])
            };
            let transform = match stream_type {
                "metrics" => {
                    json!({"metric_statements": [{"context": "datapoint", "statements": statements("metrics")}]})
                }
                "traces" => json!({"trace_statements": [
                    {"context": "span", "statements": statements("traces")},
                    {"context": "spanevent", "statements": statements("logs")}
                ]}),
                _ => {
                    json!({"log_statements": [{"context": "log", "statements": statements("logs")}]})
                }
            };
            merged
                .entry("processors")
                .or_default()
                .insert(routing.clone(), transform);
            if let Some(Value::Object(ps)) = stream.pointer("/service/pipelines") {
                for (p, body) in ps {
                    let mut body = body.as_object().cloned().unwrap_or_default();
                    for list in ["receivers", "processors", "exporters"] {
                        if let Some(Value::Array(ids)) = body.get_mut(list) {
                            for id in ids.iter_mut() {
                                if let Value::String(s) = id {
                                    *s = rename(s);
                                }
                            }
                        }
                    }
                    let procs = body
                        .entry("processors")
                        .or_insert_with(|| Value::Array(vec![]));
                    if let Value::Array(a) = procs {
                        a.push(json!(routing));
                    }
                    pipelines.insert(rename(p), Value::Object(body));
                }
            }
        }
    }
    // The policy's output, fed by every pipeline through `forward`.
    let exporter = format!("elasticsearch/{}", target.output_id);
    merged
        .entry("exporters")
        .or_default()
        .insert(exporter.clone(), json!({"endpoints": target.output_hosts}));
    merged
        .entry("connectors")
        .or_default()
        .insert("forward".into(), json!({}));
    let mut signals = BTreeSet::new();
    for (p, body) in pipelines.iter_mut() {
        if let Some(Value::Array(e)) = body.get_mut("exporters") {
            e.push(json!("forward"));
        } else if let Value::Object(b) = body {
            b.insert("exporters".into(), json!(["forward"]));
        }
        signals.insert(p.split('/').next().unwrap_or_default().to_owned());
    }
    for s in signals {
        pipelines.insert(
            s,
            json!({"receivers": ["forward"], "exporters": [exporter]}),
        );
    }
    let mut out = Map::new();
    for (section, components) in merged {
        if !components.is_empty() {
            out.insert(section.to_owned(), Value::Object(components));
        }
    }
    out.insert("service".into(), json!({ "pipelines": pipelines }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Files;
    use crate::policy::PolicyRequest;
    use flotilla_domain::package_policy::PackageRef;

    fn package(ds_manifest: &str, cluster: &str) -> Package {
        let mut f = Files::new();
        f.insert(
            "manifest.yml".into(),
            format!("format_version: 3.0.0\nname: p\ntitle: P\nversion: 1.0.0\n{cluster}policy_templates:\n  - name: t\n    title: T\n    inputs:\n      - type: x\n        title: X\n"),
        );
        f.insert(
            "data_stream/d/manifest.yml".into(),
            format!("title: D\nstreams:\n  - input: x\n    title: X\n{ds_manifest}"),
        );
        f.insert(
            "data_stream/d/agent/stream/stream.yml.hbs".into(),
            "a: 1\n".into(),
        );
        Package::from_files(f).unwrap()
    }

    fn role(p: &Package, namespace: Option<&str>) -> Value {
        let r = p
            .resolve_policy(PolicyRequest::default(), None, &[], &mut || unreachable!())
            .unwrap();
        let pp = PackagePolicy {
            id: "pp".into(),
            name: "n".into(),
            description: None,
            policy_id: "pol".into(),
            package: PackageRef {
                name: "p".into(),
                version: "1.0.0".into(),
                title: None,
            },
            namespace: namespace.map(Into::into),
            vars: r.vars,
            inputs: r.inputs,
            cloud_connector_id: None,
            secret_references: vec![],
            created_at: Default::default(),
            updated_at: Default::default(),
        };
        let c = compile(
            &Target {
                policy_namespace: "prod",
                revision: 3,
                output_id: "o",
                output_hosts: &[],
            },
            &[(&pp, Some(p))],
        );
        assert_eq!(c.inputs[0]["id"], "x-t-pp");
        let stream_id = c.inputs[0]["streams"][0]["id"].as_str().unwrap();
        assert!(
            stream_id.starts_with("x-") && stream_id.ends_with("-pp"),
            "{stream_id}"
        );
        assert_eq!(c.inputs[0]["use_output"], "o");
        let perms = serde_json::to_value(&c.permissions).unwrap();
        assert_eq!(
            perms["_elastic_agent_checks"],
            json!({"cluster": ["monitor"]})
        );
        assert_eq!(perms["_elastic_agent_monitoring"], json!({"indices": []}));
        perms["pp"].clone()
    }

    #[test]
    fn index_names_follow_kibana() {
        let plain = role(&package("type: logs\n", ""), None);
        assert_eq!(
            plain,
            json!({"indices": [{"names": ["logs-p.d-prod"], "privileges": ["auto_configure", "create_doc"]}]})
        );
        assert_eq!(
            role(&package("type: logs\n", ""), Some("team")),
            json!({"indices": [{"names": ["logs-p.d-team"], "privileges": ["auto_configure", "create_doc"]}]})
        );
        let names = |ds: &str| role(&package(ds, ""), None)["indices"][0]["names"][0].clone();
        assert_eq!(names("type: metrics\nhidden: true\n"), ".metrics-p.d-prod");
        assert_eq!(
            names("type: logs\ndataset: app\ndataset_is_prefix: true\n"),
            "logs-app.*-prod"
        );
        assert_eq!(
            names("type: logs\nelasticsearch:\n  dynamic_dataset: true\n"),
            "logs-*-prod"
        );
        assert_eq!(
            names("type: logs\nelasticsearch:\n  dynamic_namespace: true\n"),
            "logs-p.d-*"
        );
        let custom = role(
            &package(
                "type: logs\nelasticsearch:\n  privileges:\n    indices: [read, create_doc]\n",
                "",
            ),
            None,
        );
        assert_eq!(
            custom["indices"][0]["privileges"],
            json!(["read", "create_doc"])
        );
        let cluster = role(
            &package(
                "type: logs\n",
                "elasticsearch:\n  privileges:\n    cluster: [monitor, read_pipeline]\n",
            ),
            None,
        );
        assert_eq!(cluster["cluster"], json!(["monitor", "read_pipeline"]));
    }
}
