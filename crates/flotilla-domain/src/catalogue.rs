//! The built-in integration catalogue.
//!
//! Kept as data (`catalogue.json`, embedded at build time) so that adding an
//! integration is a data change: a package declares its inputs, their data
//! streams (`type`, `dataset`), default variables and the index privileges
//! each stream needs.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Privileges a data stream needs when its package does not say otherwise.
pub const DEFAULT_STREAM_PRIVILEGES: &[&str] = &["auto_configure", "create_doc"];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Catalogue {
    pub packages: Vec<PackageSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PackageSpec {
    pub name: String,
    pub title: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Package-level variables that every package policy must set.
    #[serde(default)]
    pub required_vars: Vec<String>,
    /// When set, the package-level variable that overrides every stream's
    /// dataset (custom logs choose their own dataset).
    #[serde(default)]
    pub dataset_var: Option<String>,
    pub inputs: Vec<InputSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InputSpec {
    #[serde(rename = "type")]
    pub input_type: String,
    pub title: String,
    pub streams: Vec<StreamSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamSpec {
    /// Data stream type: `logs`, `metrics`, `traces`, `synthetics`.
    #[serde(rename = "type")]
    pub stream_type: String,
    pub dataset: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
    /// Index privileges on the stream's data stream; defaults to
    /// [`DEFAULT_STREAM_PRIVILEGES`].
    #[serde(default)]
    pub privileges: Option<Vec<String>>,
}

impl StreamSpec {
    pub fn privileges(&self) -> Vec<String> {
        match &self.privileges {
            Some(p) => p.clone(),
            None => DEFAULT_STREAM_PRIVILEGES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

impl Catalogue {
    /// The catalogue compiled into this binary.
    pub fn builtin() -> &'static Catalogue {
        static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
        CATALOGUE.get_or_init(|| {
            serde_json::from_str(include_str!("catalogue.json"))
                .expect("the embedded catalogue.json is valid (checked by a unit test)")
        })
    }

    pub fn package(&self, name: &str) -> Option<&PackageSpec> {
        self.packages.iter().find(|p| p.name == name)
    }
}

impl PackageSpec {
    pub fn input(&self, input_type: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.input_type == input_type)
    }
}

impl InputSpec {
    pub fn stream(&self, dataset: &str) -> Option<&StreamSpec> {
        self.streams.iter().find(|s| s.dataset == dataset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_parses_and_has_the_required_packages() {
        let c = Catalogue::builtin();
        for name in ["system", "nginx", "log"] {
            assert!(c.package(name).is_some(), "{name}");
        }
        let nginx = c.package("nginx").unwrap();
        let logfile = nginx.input("logfile").unwrap();
        assert!(logfile.stream("nginx.access").is_some());
        assert!(logfile.stream("nginx.error").is_some());
        let system = c.package("system").unwrap();
        assert!(system.input("system/metrics").is_some());
        assert!(system.input("logfile").is_some());
    }

    #[test]
    fn every_stream_has_privileges_and_a_known_type() {
        for p in &Catalogue::builtin().packages {
            for i in &p.inputs {
                for s in &i.streams {
                    assert!(!s.privileges().is_empty());
                    assert!(["logs", "metrics", "traces", "synthetics"]
                        .contains(&s.stream_type.as_str()));
                }
            }
        }
    }
}
