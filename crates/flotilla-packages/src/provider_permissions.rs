//! What a cloud integration needs in its account: the actions the
//! permission verifier checks per policy template. Data, not code — the
//! registry `data/provider_permissions.yml` (package, policy template, a
//! semver range) is the fallback; a package may declare its own in its
//! manifest (`policy_templates[].provider_permissions`), which wins.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::package::parse_yaml_value;
use crate::Package;

/// One action to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionCheck {
    pub action: String,
    #[serde(default = "yes")]
    pub required: bool,
}

/// One managed policy that must be attached to the role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentCheck {
    pub policy_arn: String,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// What one policy template needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// `aws`, `azure` or `gcp`.
    pub provider: String,
    #[serde(default)]
    pub actions: Vec<ActionCheck>,
    #[serde(default)]
    pub attachments: Vec<AttachmentCheck>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    package: String,
    policy_template: String,
    versions: String,
    #[serde(flatten)]
    needs: Requirements,
}

struct Rule {
    package: String,
    policy_template: String,
    versions: semver::VersionReq,
    needs: Requirements,
}

const REGISTRY: &str = include_str!("../data/provider_permissions.yml");

fn registry() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        // Checked by a unit test; a broken file would fail the build's tests.
        let value = parse_yaml_value(REGISTRY).expect("provider_permissions.yml is YAML");
        let entries: Vec<Entry> = serde_json::from_value(value)
            .expect("provider_permissions.yml has the registry's shape");
        entries
            .into_iter()
            .map(|e| Rule {
                versions: semver::VersionReq::parse(&e.versions)
                    .expect("provider_permissions.yml ranges are semver"),
                package: e.package,
                policy_template: e.policy_template,
                needs: e.needs,
            })
            .collect()
    })
}

/// Where the answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The package's manifest declares it.
    Declared(Requirements),
    /// The registry has an entry for this version.
    Registry(Requirements),
    /// The registry knows the template, but no range holds this version.
    UnsupportedVersion,
    /// Nothing is known of this template.
    Unknown,
}

/// What `package`'s `policy_template` needs at `version`; `declared` is
/// the manifest's own declaration when the package has one.
pub fn requirements(
    package: &str,
    policy_template: &str,
    version: &str,
    declared: Option<&Requirements>,
) -> Lookup {
    if let Some(d) = declared {
        return Lookup::Declared(d.clone());
    }
    let rules: Vec<&Rule> = registry()
        .iter()
        .filter(|r| r.package == package && r.policy_template == policy_template)
        .collect();
    if rules.is_empty() {
        return Lookup::Unknown;
    }
    let Ok(v) = semver::Version::parse(version) else {
        return Lookup::UnsupportedVersion;
    };
    match rules.iter().find(|r| r.versions.matches(&v)) {
        Some(r) => Lookup::Registry(r.needs.clone()),
        None => Lookup::UnsupportedVersion,
    }
}

/// A package's own declaration for one of its policy templates.
pub fn declared(package: &Package, policy_template: &str) -> Option<Requirements> {
    package
        .manifest
        .policy_templates
        .iter()
        .find(|t| t.name == policy_template)
        .and_then(|t| t.provider_permissions.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_parses_and_has_the_ten_aws_templates() {
        let aws: std::collections::BTreeSet<&str> = registry()
            .iter()
            .filter(|r| r.package == "aws")
            .map(|r| r.policy_template.as_str())
            .collect();
        for t in [
            "cloudtrail",
            "guardduty",
            "securityhub",
            "s3",
            "ec2",
            "vpcflow",
            "waf",
            "route53",
            "elb",
            "cloudfront",
        ] {
            assert!(aws.contains(t), "{t}");
        }
    }

    #[test]
    fn versions_pick_the_matching_range() {
        let Lookup::Registry(new) = requirements("aws", "cloudtrail", "2.3.0", None) else {
            panic!()
        };
        let sqs = new
            .actions
            .iter()
            .find(|a| a.action == "sqs:ReceiveMessage")
            .unwrap();
        assert!(sqs.required);
        let Lookup::Registry(old) = requirements("aws", "cloudtrail", "1.9.0", None) else {
            panic!()
        };
        let sqs = old
            .actions
            .iter()
            .find(|a| a.action == "sqs:ReceiveMessage")
            .unwrap();
        assert!(!sqs.required);
        assert_eq!(
            requirements("aws", "cloudtrail", "not-semver", None),
            Lookup::UnsupportedVersion
        );
        assert_eq!(requirements("aws", "nope", "1.0.0", None), Lookup::Unknown);
        let Lookup::Registry(cspm) = requirements("cloud_security_posture", "cspm", "3.0.0", None)
        else {
            panic!()
        };
        assert_eq!(
            cspm.attachments[0].policy_arn,
            "arn:aws:iam::aws:policy/SecurityAudit"
        );
    }

    #[test]
    fn a_declaration_wins() {
        let d = Requirements {
            provider: "aws".into(),
            actions: vec![ActionCheck {
                action: "s3:GetObject".into(),
                required: true,
            }],
            attachments: vec![],
        };
        assert_eq!(
            requirements("aws", "ec2", "1.0.0", Some(&d)),
            Lookup::Declared(d)
        );
    }
}
