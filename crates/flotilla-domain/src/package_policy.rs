//! Package policies ("integrations"): an installed package configured on
//! an agent policy, stored in Kibana's shape (variables as `{value, type}`,
//! inputs per policy template with their compiled streams).

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::policy::validate_namespace;
use crate::{validate_name, ValidationError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DataStreamRef {
    #[serde(rename = "type")]
    pub stream_type: String,
    pub dataset: String,
    /// `dynamic_dataset` / `dynamic_namespace` / `privileges`, copied from
    /// the data stream's manifest as Kibana does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub elasticsearch: Option<Value>,
}

/// A variable's value as Kibana stores it: `{"value": …, "type": "text"}`.
/// A secret's value is a reference, `{"isSecretRef": true, "id": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ConfigVar {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub var_type: Option<String>,
}

impl<'de> Deserialize<'de> for ConfigVar {
    /// `{value, type}`, or (as older Flotilla stored them) a bare value.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(ConfigVar::from_value(v))
    }
}

impl ConfigVar {
    /// A `{value[, type][, frozen]}` object is the wrapped form; anything
    /// else is a bare value.
    pub fn from_value(v: Value) -> ConfigVar {
        match v {
            // `{"type": "text"}` is a wrapper without a value (Kibana
            // leaves `value` out when a variable has none).
            Value::Object(mut m)
                if (m.contains_key("value") || m.contains_key("type"))
                    && m.keys()
                        .all(|k| matches!(k.as_str(), "value" | "type" | "frozen")) =>
            {
                let value = m.remove("value").filter(|v| !v.is_null());
                let var_type = match m.remove("type") {
                    Some(Value::String(t)) => Some(t),
                    _ => None,
                };
                ConfigVar { value, var_type }
            }
            Value::Null => ConfigVar {
                value: None,
                var_type: None,
            },
            other => ConfigVar {
                value: Some(other),
                var_type: None,
            },
        }
    }
}

/// Variables by name (dotted names are kept as written).
pub type Vars = BTreeMap<String, ConfigVar>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stream {
    pub enabled: bool,
    pub data_stream: DataStreamRef,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: Vars,
    /// The stream's agent template, rendered; absent for disabled streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub compiled_stream: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Input {
    #[serde(rename = "type")]
    pub input_type: String,
    /// The policy template the input belongs to (absent in integrations
    /// stored before packages were installable: the first template that
    /// has the input is meant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_template: Option<String>,
    pub enabled: bool,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: Vars,
    pub streams: Vec<Stream>,
    /// An input-level template, rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub compiled_input: Option<Value>,
}

/// A secret a package policy holds (its value is stored encrypted, apart).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct SecretReference {
    pub id: String,
}

/// A secret value to store for a package policy, sealed by the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSecret {
    pub id: String,
    pub sealed: String,
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
    pub vars: Vars,
    pub inputs: Vec<Input>,
    pub cloud_connector_id: Option<String>,
    #[serde(default)]
    pub secret_references: Vec<SecretReference>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PackagePolicy {
    /// The namespace the integration's data goes to.
    pub fn effective_namespace<'a>(&'a self, policy_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(policy_namespace)
    }
}

/// A validated package policy, resolved against its package, ready to
/// store (with the sealed values of the secrets it references).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPackagePolicy {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub policy_id: String,
    pub package: PackageRef,
    pub namespace: Option<String>,
    pub vars: Vars,
    pub inputs: Vec<Input>,
    pub cloud_connector_id: Option<String>,
    pub secret_references: Vec<SecretReference>,
    /// Secrets first stored by this change; stored secrets not in
    /// `secret_references` any more are deleted with it.
    pub new_secrets: Vec<NewSecret>,
}

pub fn validate_package_policy_name(name: &str) -> Result<String, ValidationError> {
    validate_name("name", name, 255)
}

pub fn validate_optional_namespace(ns: Option<&str>) -> Result<Option<String>, ValidationError> {
    ns.map(|ns| validate_namespace("namespace", ns)).transpose()
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

    #[test]
    fn config_vars_round_trip_with_and_without_values() {
        for v in [
            ConfigVar {
                value: Some(json!(["/a"])),
                var_type: Some("text".into()),
            },
            ConfigVar {
                value: None,
                var_type: Some("text".into()),
            },
            ConfigVar {
                value: Some(json!({"isSecretRef": true, "id": "s"})),
                var_type: Some("password".into()),
            },
        ] {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(
                serde_json::from_str::<ConfigVar>(&text).unwrap(),
                v,
                "{text}"
            );
        }
        // Older Flotilla stored bare values.
        assert_eq!(
            serde_json::from_value::<ConfigVar>(json!("10s")).unwrap(),
            ConfigVar {
                value: Some(json!("10s")),
                var_type: None
            }
        );
    }
}
