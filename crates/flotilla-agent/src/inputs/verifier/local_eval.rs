//! Local evaluation of an identity's own IAM policies, for when
//! `iam:SimulatePrincipalPolicy` is not available.
//!
//! The `iam-rs` crate evaluates the statements (action wildcards and case,
//! `NotAction`, `Allow`/`Deny` with an explicit deny winning, conditions).
//! The request's resource is the literal `*`, as the simulation is asked
//! with `ResourceArns=*`: a statement applies when one of its `Resource`
//! patterns matches the string `*` (so `"*"` does, `arn:aws:s3:::b/*` does
//! not), or none of its `NotResource` patterns does. That part is decided
//! here, before `iam-rs` sees the statements (it only matches ARNs). No
//! request context is given, so a condition on a key is not met.
//!
//! Not seen: SCPs, permission boundaries, session policies, resource
//! policies, and a user's group policies.

use iam_rs::{
    Arn, Decision, EvaluationOptions, IAMPolicy, IAMRequest, IAMResource, PolicyEvaluator,
    Principal, PrincipalId,
};

/// What the local evaluation leaves out; said on every document it decides.
pub const CAVEAT: &str = "local evaluation of the identity's own policies: SCPs, permission boundaries and resource policies are not seen";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDecision {
    Allowed,
    ImplicitDeny,
    ExplicitDeny,
}

impl LocalDecision {
    /// As `SimulatePrincipalPolicy`'s `EvalDecision` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalDecision::Allowed => "allowed",
            LocalDecision::ImplicitDeny => "implicitDeny",
            LocalDecision::ExplicitDeny => "explicitDeny",
        }
    }
}

/// `*` and `?` glob, as IAM patterns use them (case-sensitive).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn any_matches_star(r: &IAMResource) -> bool {
    match r {
        IAMResource::Single(p) => glob(p, "*"),
        IAMResource::Multiple(ps) => ps.iter().any(|p| glob(p, "*")),
    }
}

/// A policy document (JSON) as the evaluator takes it.
pub fn parse_policy(json: &str) -> Result<IAMPolicy, String> {
    IAMPolicy::from_json(json).map_err(|e| e.to_string())
}

/// Whether `principal` (a role or user ARN) may do `action` on `*` under
/// `policies`.
pub fn evaluate(
    policies: &[IAMPolicy],
    principal: &str,
    action: &str,
) -> Result<LocalDecision, String> {
    // Keep the statements that apply to the resource `*`; the evaluator
    // then ignores resources.
    let applicable: Vec<IAMPolicy> = policies
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.statement
                .retain(|s| match (&s.resource, &s.not_resource) {
                    (Some(r), _) => any_matches_star(r),
                    (None, Some(nr)) => !any_matches_star(nr),
                    (None, None) => false,
                });
            p
        })
        .collect();
    let evaluator = PolicyEvaluator::with_policies(applicable).with_options(EvaluationOptions {
        ignore_resource_constraints: true,
        ..EvaluationOptions::default()
    });
    // Any valid ARN: resources are not looked at (decided above).
    let resource = Arn::parse("arn:aws:iam::000000000000:root").map_err(|e| e.to_string())?;
    let request = IAMRequest::new(
        Principal::Aws(PrincipalId::String(principal.to_owned())),
        action,
        resource,
    );
    match evaluator
        .evaluate(&request)
        .map_err(|e| e.to_string())?
        .decision
    {
        Decision::Allow => Ok(LocalDecision::Allowed),
        Decision::Deny => Ok(LocalDecision::ExplicitDeny),
        Decision::NotApplicable => Ok(LocalDecision::ImplicitDeny),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/Verifier";

    fn eval(docs: &[&str], action: &str) -> LocalDecision {
        let p: Vec<IAMPolicy> = docs.iter().map(|d| parse_policy(d).unwrap()).collect();
        evaluate(&p, ROLE, action).unwrap()
    }

    #[test]
    fn globs() {
        assert!(glob("*", "*"));
        assert!(glob("?", "*"));
        assert!(!glob("arn:*", "*"));
        assert!(glob("cloudtrail:*", "cloudtrail:LookupEvents"));
        assert!(glob("s3:Get*Acl", "s3:GetObjectAcl"));
        assert!(!glob("s3:Get*Acl", "s3:GetObject"));
        assert!(glob("a*b*c", "aXXbYYc"));
    }

    #[test]
    fn wildcards_case_and_lists() {
        let p = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["cloudtrail:Lookup*","s3:getobject"],"Resource":"*"}}"#;
        assert_eq!(
            eval(&[p], "cloudtrail:LookupEvents"),
            LocalDecision::Allowed
        );
        assert_eq!(
            eval(&[p], "s3:GetObject"),
            LocalDecision::Allowed,
            "actions are case-insensitive"
        );
        assert_eq!(
            eval(&[p], "cloudtrail:DescribeTrails"),
            LocalDecision::ImplicitDeny
        );
        let all = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
        assert_eq!(
            eval(&[all], "guardduty:ListDetectors"),
            LocalDecision::Allowed
        );
        assert_eq!(
            eval(&[], "guardduty:ListDetectors"),
            LocalDecision::ImplicitDeny
        );
    }

    #[test]
    fn explicit_deny_wins_across_policies() {
        let allow = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        let deny = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:GetObject","Resource":"*"}]}"#;
        assert_eq!(
            eval(&[allow, deny], "s3:GetObject"),
            LocalDecision::ExplicitDeny
        );
        assert_eq!(
            eval(&[deny, allow], "s3:GetObject"),
            LocalDecision::ExplicitDeny
        );
        assert_eq!(
            eval(&[allow, deny], "s3:ListBucket"),
            LocalDecision::Allowed
        );
    }

    #[test]
    fn not_action_and_resources() {
        let p = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","NotAction":"iam:*","Resource":"*"}]}"#;
        assert_eq!(eval(&[p], "ec2:DescribeInstances"), LocalDecision::Allowed);
        assert_eq!(eval(&[p], "iam:CreateUser"), LocalDecision::ImplicitDeny);
        let deny_not = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Effect":"Deny","NotAction":["s3:*","sqs:*"],"Resource":"*"}]}"#;
        assert_eq!(eval(&[deny_not], "s3:GetObject"), LocalDecision::Allowed);
        assert_eq!(
            eval(&[deny_not], "ec2:DescribeInstances"),
            LocalDecision::ExplicitDeny
        );
        // A statement scoped to one bucket does not cover the resource `*`.
        let scoped = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::logs/*"}]}"#;
        assert_eq!(eval(&[scoped], "s3:GetObject"), LocalDecision::ImplicitDeny);
        let not_res = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","NotResource":"arn:aws:s3:::secret/*"}]}"#;
        assert_eq!(eval(&[not_res], "s3:GetObject"), LocalDecision::Allowed);
        // A condition on a key that is not given is not met.
        let cond = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*","Condition":{"StringEquals":{"aws:SourceVpc":"vpc-1"}}}]}"#;
        assert_eq!(eval(&[cond], "s3:GetObject"), LocalDecision::ImplicitDeny);
    }
}
