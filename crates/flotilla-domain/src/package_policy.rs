//! Package policies ("integrations"): a catalogue package configured on an
//! agent policy.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::catalogue::{Catalogue, PackageSpec};
use crate::policy::validate_namespace;
use crate::{validate_name, ValidationError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataStreamRef {
    #[serde(rename = "type")]
    pub stream_type: String,
    pub dataset: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stream {
    pub enabled: bool,
    pub data_stream: DataStreamRef,
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Input {
    #[serde(rename = "type")]
    pub input_type: String,
    pub enabled: bool,
    pub streams: Vec<Stream>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PackagePolicy {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub policy_id: String,
    pub package: PackageRef,
    /// The integration's own namespace; `None` means the agent policy's.
    pub namespace: Option<String>,
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
    pub inputs: Vec<Input>,
    pub cloud_connector_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PackagePolicy {
    /// The namespace the integration's data goes to.
    pub fn effective_namespace<'a>(&'a self, policy_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(policy_namespace)
    }
}

/// Caller-supplied inputs, before resolution against the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    #[serde(rename = "type")]
    pub input_type: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub streams: Option<Vec<StreamRequest>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub data_stream: DataStreamRef,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// A validated, catalogue-resolved package policy ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPackagePolicy {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub policy_id: String,
    pub package: PackageRef,
    pub namespace: Option<String>,
    pub vars: Map<String, Value>,
    pub inputs: Vec<Input>,
    pub cloud_connector_id: Option<String>,
}

pub fn validate_package_policy_name(name: &str) -> Result<String, ValidationError> {
    validate_name("name", name, 255)
}

pub fn validate_optional_namespace(ns: Option<&str>) -> Result<Option<String>, ValidationError> {
    ns.map(|ns| validate_namespace("namespace", ns)).transpose()
}

/// Find the package, checking the requested version against the catalogue.
pub fn resolve_package<'c>(
    catalogue: &'c Catalogue,
    package: &PackageRef,
) -> Result<&'c PackageSpec, ValidationError> {
    let spec = catalogue.package(&package.name).ok_or_else(|| {
        let known: Vec<_> = catalogue.packages.iter().map(|p| p.name.as_str()).collect();
        ValidationError::new(
            "package.name",
            format!(
                "unknown integration '{}' (known: {})",
                package.name,
                known.join(", ")
            ),
        )
    })?;
    if !package.version.is_empty() && package.version != spec.version {
        return Err(ValidationError::new(
            "package.version",
            format!(
                "integration '{}' is available in version {}, not {}",
                spec.name, spec.version, package.version
            ),
        ));
    }
    Ok(spec)
}

/// Validate package-level variables and resolve the inputs against the
/// catalogue. Omitted inputs (or an input's omitted streams) take the
/// package's defaults; listed ones must exist in the package.
pub fn resolve_inputs(
    spec: &PackageSpec,
    vars: &Map<String, Value>,
    requested: Option<&[InputRequest]>,
) -> Result<Vec<Input>, ValidationError> {
    for required in &spec.required_vars {
        match vars.get(required) {
            None | Some(Value::Null) => {
                return Err(ValidationError::new(
                    format!("vars.{required}"),
                    format!("is required by integration '{}'", spec.name),
                ))
            }
            Some(_) => {}
        }
    }
    check_reserved("vars", vars)?;
    if let Some(paths) = vars.get("paths") {
        validate_paths("vars.paths", paths)?;
    }
    let dataset_override = match &spec.dataset_var {
        Some(var) => match vars.get(var) {
            None | Some(Value::Null) => None,
            Some(Value::String(ds)) => Some(validate_dataset(&format!("vars.{var}"), ds)?),
            Some(_) => {
                return Err(ValidationError::new(
                    format!("vars.{var}"),
                    "must be a string",
                ))
            }
        },
        None => None,
    };

    let default_streams = |input: &crate::catalogue::InputSpec| -> Vec<Stream> {
        input
            .streams
            .iter()
            .map(|s| Stream {
                enabled: true,
                data_stream: DataStreamRef {
                    stream_type: s.stream_type.clone(),
                    dataset: dataset_override
                        .clone()
                        .unwrap_or_else(|| s.dataset.clone()),
                },
                // Catalogue defaults are applied when the policy is built,
                // so package-level variables can override them.
                vars: Map::new(),
            })
            .collect()
    };

    let Some(requested) = requested else {
        return Ok(spec
            .inputs
            .iter()
            .map(|i| Input {
                input_type: i.input_type.clone(),
                enabled: true,
                streams: default_streams(i),
            })
            .collect());
    };

    let mut inputs = Vec::with_capacity(requested.len());
    for (i, req) in requested.iter().enumerate() {
        let input_spec = spec.input(&req.input_type).ok_or_else(|| {
            ValidationError::new(
                format!("inputs[{i}].type"),
                format!(
                    "integration '{}' has no input '{}'",
                    spec.name, req.input_type
                ),
            )
        })?;
        if requested[..i]
            .iter()
            .any(|r| r.input_type == req.input_type)
        {
            return Err(ValidationError::new(
                format!("inputs[{i}].type"),
                format!("input '{}' is listed twice", req.input_type),
            ));
        }
        let streams = match &req.streams {
            None => default_streams(input_spec),
            Some(streams) => {
                let mut out = Vec::with_capacity(streams.len());
                for (j, s) in streams.iter().enumerate() {
                    let field = format!("inputs[{i}].streams[{j}]");
                    // A package with a dataset variable has one configurable stream.
                    let stream_spec = if spec.dataset_var.is_some() {
                        input_spec.streams.first()
                    } else {
                        input_spec.stream(&s.data_stream.dataset)
                    }
                    .ok_or_else(|| {
                        ValidationError::new(
                            format!("{field}.data_stream.dataset"),
                            format!(
                                "input '{}' of '{}' has no data stream '{}'",
                                req.input_type, spec.name, s.data_stream.dataset
                            ),
                        )
                    })?;
                    if s.data_stream.stream_type != stream_spec.stream_type {
                        return Err(ValidationError::new(
                            format!("{field}.data_stream.type"),
                            format!("must be '{}'", stream_spec.stream_type),
                        ));
                    }
                    let dataset = match (&dataset_override, spec.dataset_var.is_some()) {
                        (Some(ds), _) => ds.clone(),
                        (None, true) => validate_dataset(
                            &format!("{field}.data_stream.dataset"),
                            &s.data_stream.dataset,
                        )?,
                        (None, false) => stream_spec.dataset.clone(),
                    };
                    if let Some(paths) = s.vars.get("paths") {
                        validate_paths(&format!("{field}.vars.paths"), paths)?;
                    }
                    check_reserved(&format!("{field}.vars"), &s.vars)?;
                    if streams[..j]
                        .iter()
                        .any(|o| o.data_stream.dataset == s.data_stream.dataset)
                    {
                        return Err(ValidationError::new(
                            format!("{field}.data_stream.dataset"),
                            format!("data stream '{}' is listed twice", s.data_stream.dataset),
                        ));
                    }
                    let vars = s.vars.clone();
                    out.push(Stream {
                        enabled: s.enabled,
                        data_stream: DataStreamRef {
                            stream_type: stream_spec.stream_type.clone(),
                            dataset,
                        },
                        vars,
                    });
                }
                out
            }
        };
        inputs.push(Input {
            input_type: req.input_type.clone(),
            enabled: req.enabled,
            streams,
        });
    }
    Ok(inputs)
}

/// Keys the agent's stream configuration owns; variables may not set them.
const RESERVED_VARS: &[&str] = &["id", "type", "data_stream"];

fn check_reserved(field: &str, vars: &Map<String, Value>) -> Result<(), ValidationError> {
    match RESERVED_VARS.iter().find(|k| vars.contains_key(**k)) {
        Some(k) => Err(ValidationError::new(format!("{field}.{k}"), "is reserved")),
        None => Ok(()),
    }
}

fn validate_paths(field: &str, paths: &Value) -> Result<(), ValidationError> {
    let Value::Array(items) = paths else {
        return Err(ValidationError::new(field, "must be a list of file paths"));
    };
    if items.is_empty() {
        return Err(ValidationError::new(field, "must list at least one path"));
    }
    for item in items {
        match item {
            Value::String(s) if !s.trim().is_empty() => {}
            _ => {
                return Err(ValidationError::new(
                    field,
                    "must contain only non-empty strings",
                ))
            }
        }
    }
    Ok(())
}

/// Datasets are part of data stream names: lowercase letters, digits, `_` and
/// `.`, at most 100 bytes, not starting with `.` or `_`.
pub fn validate_dataset(field: &str, dataset: &str) -> Result<String, ValidationError> {
    let ok = !dataset.is_empty()
        && dataset.len() <= 100
        && !dataset.starts_with(['.', '_'])
        && dataset
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    if ok {
        Ok(dataset.to_owned())
    } else {
        Err(ValidationError::new(
            field,
            "must be 1-100 lowercase letters, digits, '_' or '.', not starting with '.' or '_'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str) -> &'static PackageSpec {
        Catalogue::builtin().package(name).unwrap()
    }

    #[test]
    fn omitted_inputs_take_the_catalogue_defaults() {
        let inputs = resolve_inputs(spec("nginx"), &Map::new(), None).unwrap();
        assert_eq!(inputs.len(), 1);
        let datasets: Vec<_> = inputs[0]
            .streams
            .iter()
            .map(|s| s.data_stream.dataset.as_str())
            .collect();
        assert_eq!(datasets, ["nginx.access", "nginx.error"]);
    }

    #[test]
    fn unknown_input_and_dataset_are_named() {
        let req: Vec<InputRequest> = serde_json::from_value(json!([{"type": "httpjson"}])).unwrap();
        let err = resolve_inputs(spec("nginx"), &Map::new(), Some(&req)).unwrap_err();
        assert_eq!(err.field, "inputs[0].type");

        let req: Vec<InputRequest> =
            serde_json::from_value(json!([{"type": "logfile", "streams": [
            {"data_stream": {"type": "logs", "dataset": "nginx.stub"}}]}]))
            .unwrap();
        let err = resolve_inputs(spec("nginx"), &Map::new(), Some(&req)).unwrap_err();
        assert_eq!(err.field, "inputs[0].streams[0].data_stream.dataset");
    }

    #[test]
    fn custom_logs_need_paths_and_take_a_dataset() {
        let err = resolve_inputs(spec("log"), &Map::new(), None).unwrap_err();
        assert_eq!(err.field, "vars.paths");

        let vars = json!({"paths": ["/var/log/app/*.log"], "dataset": "myapp"});
        let inputs = resolve_inputs(spec("log"), vars.as_object().unwrap(), None).unwrap();
        assert_eq!(inputs[0].streams[0].data_stream.dataset, "myapp");

        let vars = json!({"paths": ["/x"], "dataset": "My-App"});
        let err = resolve_inputs(spec("log"), vars.as_object().unwrap(), None).unwrap_err();
        assert_eq!(err.field, "vars.dataset");

        let vars = json!({"paths": "/x"});
        assert_eq!(
            resolve_inputs(spec("log"), vars.as_object().unwrap(), None)
                .unwrap_err()
                .field,
            "vars.paths"
        );
    }

    #[test]
    fn reserved_and_repeated_are_refused() {
        let vars = json!({"paths": ["/x"], "data_stream": {"dataset": "evil"}});
        let err = resolve_inputs(spec("log"), vars.as_object().unwrap(), None).unwrap_err();
        assert_eq!(err.field, "vars.data_stream");
        let req: Vec<InputRequest> =
            serde_json::from_value(json!([{"type": "logfile", "streams": [
            {"data_stream": {"type": "logs", "dataset": "nginx.access"}, "vars": {"id": "x"}}]}]))
            .unwrap();
        assert_eq!(
            resolve_inputs(spec("nginx"), &Map::new(), Some(&req))
                .unwrap_err()
                .field,
            "inputs[0].streams[0].vars.id"
        );
        let req: Vec<InputRequest> =
            serde_json::from_value(json!([{"type": "logfile", "streams": [
            {"data_stream": {"type": "logs", "dataset": "nginx.access"}},
            {"data_stream": {"type": "logs", "dataset": "nginx.access"}}]}]))
            .unwrap();
        let err = resolve_inputs(spec("nginx"), &Map::new(), Some(&req)).unwrap_err();
        assert_eq!(err.field, "inputs[0].streams[1].data_stream.dataset");
        assert!(serde_json::from_value::<InputRequest>(
            json!({"type": "logfile", "enabeld": false})
        )
        .is_err());
    }

    #[test]
    fn version_must_match_the_catalogue() {
        let c = Catalogue::builtin();
        let ok = PackageRef {
            name: "nginx".into(),
            version: "1.20.0".into(),
        };
        assert!(resolve_package(c, &ok).is_ok());
        let bad = PackageRef {
            name: "nginx".into(),
            version: "0.1.0".into(),
        };
        assert_eq!(
            resolve_package(c, &bad).unwrap_err().field,
            "package.version"
        );
        let unknown = PackageRef {
            name: "apache".into(),
            version: String::new(),
        };
        assert_eq!(
            resolve_package(c, &unknown).unwrap_err().field,
            "package.name"
        );
    }
}
