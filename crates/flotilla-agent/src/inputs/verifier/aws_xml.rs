//! The XML answers of the STS and IAM Query APIs, as far as the verifier
//! reads them (`quick-xml` with serde; unknown elements are ignored). Types
//! holding secrets derive no `Debug`.

use serde::Deserialize;

/// `<X><member>…</member>…</X>`.
#[derive(Debug, Deserialize)]
pub struct Members<T> {
    #[serde(default = "Vec::new")]
    pub member: Vec<T>,
}

impl<T> Default for Members<T> {
    fn default() -> Self {
        Members { member: Vec::new() }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AssumeRoleResponse {
    pub assume_role_result: AssumeRoleResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AssumeRoleResult {
    pub credentials: SessionCredentials,
}

/// Session credentials: secret, so no `Debug`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetCallerIdentityResponse {
    pub get_caller_identity_result: CallerIdentity,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CallerIdentity {
    pub arn: String,
    #[serde(default)]
    pub account: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SimulateResponse {
    pub simulate_principal_policy_result: SimulateResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SimulateResult {
    #[serde(default)]
    pub evaluation_results: Members<EvaluationResult>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EvaluationResult {
    pub eval_action_name: String,
    pub eval_decision: String,
}

/// `List{Role,User}Policies`: inline policy names.
#[derive(Debug, Deserialize)]
pub struct ListPoliciesResponse {
    #[serde(rename = "ListRolePoliciesResult", alias = "ListUserPoliciesResult")]
    pub result: ListPoliciesResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListPoliciesResult {
    #[serde(default)]
    pub policy_names: Members<String>,
    #[serde(default)]
    pub is_truncated: bool,
    #[serde(default)]
    pub marker: Option<String>,
}

/// `Get{Role,User}Policy`: one inline policy.
#[derive(Debug, Deserialize)]
pub struct GetInlinePolicyResponse {
    #[serde(rename = "GetRolePolicyResult", alias = "GetUserPolicyResult")]
    pub result: InlinePolicy,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InlinePolicy {
    pub policy_document: String,
}

/// `ListAttached{Role,User}Policies`.
#[derive(Debug, Deserialize)]
pub struct ListAttachedResponse {
    #[serde(
        rename = "ListAttachedRolePoliciesResult",
        alias = "ListAttachedUserPoliciesResult"
    )]
    pub result: ListAttachedResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAttachedResult {
    #[serde(default)]
    pub attached_policies: Members<AttachedPolicy>,
    #[serde(default)]
    pub is_truncated: bool,
    #[serde(default)]
    pub marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachedPolicy {
    pub policy_arn: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetPolicyResponse {
    pub get_policy_result: GetPolicyResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetPolicyResult {
    pub policy: ManagedPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagedPolicy {
    pub default_version_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetPolicyVersionResponse {
    pub get_policy_version_result: GetPolicyVersionResult,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetPolicyVersionResult {
    pub policy_version: PolicyVersion,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PolicyVersion {
    pub document: String,
}

/// `<ErrorResponse><Error><Code/><Message/></Error>…` (IAM, STS), or
/// `<Response><Errors><Error>…` (the EC2 style).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorResponse {
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    errors: Option<Errors>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Errors {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: Option<String>,
}

/// The code and message of an error answer, if it is one.
pub fn error(body: &str) -> Option<(String, String)> {
    let r: ErrorResponse = quick_xml::de::from_str(body).ok()?;
    let e = r.error.or(r.errors.map(|e| e.error))?;
    Some((e.code, e.message.unwrap_or_default()))
}

pub fn parse<T: for<'de> Deserialize<'de>>(body: &str) -> Result<T, String> {
    quick_xml::de::from_str(body).map_err(|e| e.to_string())
}
