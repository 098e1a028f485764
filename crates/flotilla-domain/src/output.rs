//! Outputs: where agents send their data.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{validate_name, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    Elasticsearch,
    Logstash,
    Kafka,
}

impl OutputType {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputType::Elasticsearch => "elasticsearch",
            OutputType::Logstash => "logstash",
            OutputType::Kafka => "kafka",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "elasticsearch" => Some(Self::Elasticsearch),
            "logstash" => Some(Self::Logstash),
            "kafka" => Some(Self::Kafka),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Output {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub output_type: OutputType,
    pub hosts: Vec<String>,
    pub is_default: bool,
    /// Agents' keys are minted in the cluster behind `hosts` (a credential
    /// is configured for it), not by Flotilla's own key service.
    #[serde(default)]
    pub remote_key_management: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A validated request to create an output.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutput {
    pub id: Option<String>,
    pub name: String,
    pub output_type: OutputType,
    pub hosts: Vec<String>,
    pub is_default: bool,
}

/// A validated partial update; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputUpdate {
    pub name: Option<String>,
    pub output_type: Option<OutputType>,
    pub hosts: Option<Vec<String>>,
    pub is_default: Option<bool>,
}

pub fn validate_name_field(name: &str) -> Result<String, ValidationError> {
    validate_name("name", name, 255)
}

/// Hosts are URLs (`https://es:9200`) for Elasticsearch, `host:port` otherwise.
pub fn validate_hosts(
    output_type: OutputType,
    hosts: &[String],
) -> Result<Vec<String>, ValidationError> {
    if hosts.is_empty() {
        return Err(ValidationError::new("hosts", "must list at least one host"));
    }
    if hosts.len() > 64 {
        return Err(ValidationError::new("hosts", "must list at most 64 hosts"));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        let h = h.trim();
        let field = format!("hosts[{i}]");
        if h.is_empty() || h.len() > 2048 || h.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValidationError::new(
                field,
                "must be a non-empty host without whitespace",
            ));
        }
        match output_type {
            OutputType::Elasticsearch => {
                let rest = h
                    .strip_prefix("https://")
                    .or_else(|| h.strip_prefix("http://"))
                    .ok_or_else(|| {
                        ValidationError::new(&field, "must be an http:// or https:// URL")
                    })?;
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(ValidationError::new(
                        field,
                        "must name a host after the scheme",
                    ));
                }
            }
            OutputType::Logstash | OutputType::Kafka => {
                let (host, port) = h
                    .rsplit_once(':')
                    .ok_or_else(|| ValidationError::new(&field, "must be host:port"))?;
                if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(ValidationError::new(
                        field,
                        "must be host:port with a valid port",
                    ));
                }
            }
        }
        out.push(h.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elasticsearch_hosts_must_be_urls() {
        assert!(validate_hosts(OutputType::Elasticsearch, &["https://es:9200".into()]).is_ok());
        let err = validate_hosts(OutputType::Elasticsearch, &["es:9200".into()]).unwrap_err();
        assert_eq!(err.field, "hosts[0]");
        assert!(validate_hosts(OutputType::Elasticsearch, &[]).is_err());
    }

    #[test]
    fn logstash_hosts_need_a_port() {
        assert!(validate_hosts(OutputType::Logstash, &["ls:5044".into()]).is_ok());
        assert!(validate_hosts(OutputType::Logstash, &["ls".into()]).is_err());
        assert!(validate_hosts(OutputType::Logstash, &["ls:0".into()]).is_err());
    }
}
