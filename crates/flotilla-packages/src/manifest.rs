//! What a package's YAML files say, field by field (package-spec 1.x–3.x).
//!
//! These types only describe; [`crate::package::Package`] checks them
//! against each other. Fields the spec has but Flotilla does not use
//! (icons, screenshots, categories, …) are ignored, as Kibana ignores what
//! it does not know.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageType {
    Integration,
    Input,
}

/// The top-level `manifest.yml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: String,
    pub name: String,
    pub title: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "type", default = "integration")]
    pub package_type: PackageType,
    #[serde(default)]
    pub owner: Option<Owner>,
    #[serde(default)]
    pub conditions: Option<Conditions>,
    #[serde(default)]
    pub vars: Vec<Var>,
    #[serde(default)]
    pub policy_templates: Vec<PolicyTemplate>,
    #[serde(default)]
    pub elasticsearch: Option<PackageElasticsearch>,
}

fn integration() -> PackageType {
    PackageType::Integration
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    #[serde(default)]
    pub github: Option<String>,
    #[serde(rename = "type", default)]
    pub owner_type: Option<String>,
}

/// `conditions`: either nested (`kibana: {version: …}`) or the older flat
/// form (`kibana.version: …`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conditions {
    #[serde(default)]
    pub kibana: Option<KibanaCondition>,
    #[serde(rename = "kibana.version", default, skip_serializing)]
    pub flat_kibana_version: Option<String>,
    #[serde(default)]
    pub elastic: Option<ElasticCondition>,
}

impl Conditions {
    /// The Kibana version range, whichever form the manifest used.
    pub fn kibana_version(&self) -> Option<&str> {
        self.kibana
            .as_ref()
            .and_then(|k| k.version.as_deref())
            .or(self.flat_kibana_version.as_deref())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KibanaCondition {
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElasticCondition {
    #[serde(default)]
    pub subscription: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PackageElasticsearch {
    #[serde(default)]
    pub privileges: Option<ClusterPrivileges>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterPrivileges {
    #[serde(default)]
    pub cluster: Vec<String>,
}

/// A policy template: for integration packages a set of inputs over some
/// (or all) data streams; for input packages one input with its own
/// template and variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyTemplate {
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Integration packages: the data streams this template covers (all
    /// when absent).
    #[serde(default)]
    pub data_streams: Option<Vec<String>>,
    #[serde(default)]
    pub inputs: Vec<TemplateInput>,
    #[serde(default)]
    pub vars: Vec<Var>,
    #[serde(default)]
    pub multiple: Option<bool>,
    /// Input packages: the data stream type (`logs`, `metrics`, …).
    #[serde(rename = "type", default)]
    pub stream_type: Option<String>,
    /// Input packages: the input type.
    #[serde(default)]
    pub input: Option<String>,
    /// Input packages: the template under `agent/input/`.
    #[serde(default)]
    pub template_path: Option<String>,
    /// Cloud integrations: what the template needs in the account its
    /// cloud connector reaches (checked by the permission verifier).
    #[serde(default)]
    pub provider_permissions: Option<crate::provider_permissions::Requirements>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateInput {
    #[serde(rename = "type")]
    pub input_type: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub vars: Vec<Var>,
    /// An input-level template under `agent/input/`.
    #[serde(default)]
    pub template_path: Option<String>,
    #[serde(default)]
    pub input_group: Option<String>,
}

/// A `data_stream/<folder>/manifest.yml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataStreamManifest {
    #[serde(rename = "type")]
    pub stream_type: String,
    pub title: String,
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default)]
    pub dataset_is_prefix: bool,
    #[serde(default)]
    pub hidden: bool,
    #[serde(default)]
    pub elasticsearch: Option<DataStreamElasticsearch>,
    #[serde(default)]
    pub streams: Vec<StreamManifest>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DataStreamElasticsearch {
    #[serde(default)]
    pub privileges: Option<IndexPrivileges>,
    #[serde(default)]
    pub dynamic_dataset: bool,
    #[serde(default)]
    pub dynamic_namespace: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexPrivileges {
    #[serde(default)]
    pub indices: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamManifest {
    pub input: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub template_path: Option<String>,
    #[serde(default)]
    pub template_paths: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub vars: Vec<Var>,
}

/// A variable declaration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Var {
    pub name: String,
    #[serde(rename = "type")]
    pub var_type: VarType,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub multi: bool,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub show_user: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<SelectOption>,
}

impl Var {
    /// Secret vars are stored encrypted and never returned.
    pub fn is_secret(&self) -> bool {
        self.secret
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarType {
    Text,
    Textarea,
    Password,
    Bool,
    Integer,
    Yaml,
    Select,
    Url,
    Email,
    Duration,
    TimeZone,
}

impl VarType {
    pub fn as_str(self) -> &'static str {
        match self {
            VarType::Text => "text",
            VarType::Textarea => "textarea",
            VarType::Password => "password",
            VarType::Bool => "bool",
            VarType::Integer => "integer",
            VarType::Yaml => "yaml",
            VarType::Select => "select",
            VarType::Url => "url",
            VarType::Email => "email",
            VarType::Duration => "duration",
            VarType::TimeZone => "time_zone",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectOption {
    pub value: Value,
    pub text: String,
}
