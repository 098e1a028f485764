//! AWS: base credentials (the connector's access key, else the agent's
//! environment), `sts:AssumeRole` when the connector names a role (External
//! ID always sent; a role without one is refused here), then
//! `sts:GetCallerIdentity`, then per action `iam:SimulatePrincipalPolicy` or
//! a local evaluation of the identity's policies, and per attachment
//! `iam:ListAttachedRolePolicies`.
//!
//! Requests are Query-API form posts signed with `aws-sigv4` over the
//! agent's `reqwest`; answers are read with `quick-xml` (`aws_xml`).

use std::time::{Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use iam_rs::IAMPolicy;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::local_eval::{self, LocalDecision, CAVEAT};
use super::{
    all, aws_xml as xml, endpoint, secret, status_for_error, text, Check, Env, Kind, Outcome,
    Report, Status, Verifier,
};

pub const SESSION_NAME: &str = "flotilla-verifier";
pub const SESSION_SECONDS: &str = "900";
pub const METHOD_SIMULATE: &str = "simulate_principal_policy";
pub const METHOD_LOCAL: &str = "local_simulation";
pub const METHOD_ATTACHED: &str = "list_attached_policies";
pub const METHOD_SESSION: &str = "session";

/// How actions are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulation {
    /// `SimulatePrincipalPolicy`, falling back to local evaluation when the
    /// call itself fails.
    Auto,
    /// `SimulatePrincipalPolicy` only.
    Api,
    /// Local evaluation only.
    Local,
}

/// The `aws` block of a stream. Holds secrets: no `Debug`.
pub struct AwsConfig {
    pub role_arn: Option<String>,
    pub external_id: Option<SecretString>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub region: String,
    pub sts_endpoint: String,
    pub iam_endpoint: String,
    pub simulation: Simulation,
}

impl AwsConfig {
    pub fn parse(v: &Value) -> Result<AwsConfig, String> {
        let region = text(v, "/default_region").unwrap_or_else(|| "us-east-1".into());
        // The region becomes part of a host name: nothing but a region's
        // characters may reach it (`@evil/#` would move the host).
        let region_ok = (4..=32).contains(&region.len())
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !region.starts_with('-')
            && !region.ends_with('-');
        if !region_ok {
            return Err(format!(
                "aws.default_region {region:?} is not an AWS region name"
            ));
        }
        let simulation = match text(v, "/simulation").as_deref() {
            None | Some("auto") => Simulation::Auto,
            Some("api") => Simulation::Api,
            Some("local") => Simulation::Local,
            Some(other) => {
                return Err(format!(
                    "aws.simulation {other:?} is not one of auto, api, local"
                ))
            }
        };
        Ok(AwsConfig {
            role_arn: text(v, "/role_arn"),
            external_id: secret(v, "/external_id"),
            access_key_id: text(v, "/access_key_id"),
            secret_access_key: secret(v, "/secret_access_key"),
            sts_endpoint: endpoint(
                v,
                "/sts_endpoint",
                format!("https://sts.{region}.amazonaws.com"),
            )?,
            iam_endpoint: endpoint(v, "/iam_endpoint", "https://iam.amazonaws.com".into())?,
            region,
            simulation,
        })
    }
}

/// A signing identity. Secret: no `Debug`.
pub struct Creds {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
}

/// An AWS API error: its code (`AccessDenied`, …) and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

impl ApiError {
    fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// `arn:<p>:sts::<acct>:assumed-role/<Role>/<session>` →
/// `arn:<p>:iam::<acct>:role/<Role>`; any other ARN is returned as it is.
pub fn principal_arn(caller: &str) -> String {
    let parts: Vec<&str> = caller.splitn(6, ':').collect();
    if parts.len() == 6 && parts[0] == "arn" && parts[2] == "sts" {
        if let Some(rest) = parts[5].strip_prefix("assumed-role/") {
            if let Some((role, _session)) = rest.split_once('/') {
                return format!("arn:{}:iam::{}:role/{role}", parts[1], parts[4]);
            }
        }
    }
    caller.to_owned()
}

/// The account of an ARN (`arn:p:svc:region:ACCOUNT:…`).
pub fn arn_account(arn: &str) -> Option<String> {
    arn.split(':')
        .nth(4)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
}

/// `role` or `user`, and the name, of an IAM principal ARN.
fn principal_kind(arn: &str) -> Option<(&'static str, String)> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let (kind, rest) = resource.split_once('/')?;
    let name = rest.rsplit('/').next()?.to_owned();
    match kind {
        "role" => Some(("Role", name)),
        "user" => Some(("User", name)),
        _ => None,
    }
}

pub struct AwsVerifier<'a> {
    cfg: &'a AwsConfig,
    env: Env,
    http: reqwest::Client,
}

/// What one run has learned, so each listing is fetched once.
struct Session {
    creds: Creds,
    principal: String,
    simulate_unavailable: Option<ApiError>,
    policies: Option<Result<Vec<IAMPolicy>, ApiError>>,
    attached: Option<Result<Vec<String>, ApiError>>,
}

impl<'a> AwsVerifier<'a> {
    pub fn new(cfg: &'a AwsConfig, env: Env, http: reqwest::Client) -> AwsVerifier<'a> {
        AwsVerifier { cfg, env, http }
    }

    fn base_credentials(&self) -> Option<Creds> {
        if let (Some(id), Some(secret)) = (&self.cfg.access_key_id, &self.cfg.secret_access_key) {
            return Some(Creds {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: None,
            });
        }
        Some(Creds {
            access_key_id: (self.env)("AWS_ACCESS_KEY_ID")?,
            secret_access_key: SecretString::from((self.env)("AWS_SECRET_ACCESS_KEY")?),
            session_token: (self.env)("AWS_SESSION_TOKEN").map(SecretString::from),
        })
    }

    /// One signed Query-API call; the answer's body on 2xx.
    async fn call(
        &self,
        creds: &Creds,
        url: &str,
        service: &str,
        region: &str,
        params: &[(&str, &str)],
    ) -> Result<String, ApiError> {
        let body = query_body(params);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let identity: Identity = Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose_secret().to_owned(),
            creds
                .session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            None,
            "flotilla-verifier",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| ApiError::new("SigningError", e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| ApiError::new("SigningError", e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| ApiError::new("SigningError", e.to_string()))?
            .into_parts();
        let mut req = self
            .http
            .post(url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::new("RequestFailed", format!("{url}: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ApiError::new("RequestFailed", format!("{url}: {e}")))?;
        if status.is_success() {
            return Ok(text);
        }
        Err(match xml::error(&text) {
            Some((code, message)) => ApiError { code, message },
            None if status.as_u16() == 501 => {
                ApiError::new("NotImplemented", format!("{url} answered {status}"))
            }
            None => ApiError::new(
                &format!("HTTP{}", status.as_u16()),
                format!("{url} answered {status}"),
            ),
        })
    }

    async fn sts(&self, creds: &Creds, params: &[(&str, &str)]) -> Result<String, ApiError> {
        self.call(
            creds,
            &format!("{}/", self.cfg.sts_endpoint),
            "sts",
            &self.cfg.region,
            params,
        )
        .await
    }

    async fn iam(&self, creds: &Creds, params: &[(&str, &str)]) -> Result<String, ApiError> {
        // IAM is global: its requests are signed for us-east-1.
        self.call(
            creds,
            &format!("{}/", self.cfg.iam_endpoint),
            "iam",
            "us-east-1",
            params,
        )
        .await
    }

    async fn assume_role(
        &self,
        base: &Creds,
        role: &str,
        external_id: &SecretString,
    ) -> Result<Creds, ApiError> {
        let body = self
            .sts(
                base,
                &[
                    ("Action", "AssumeRole"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role),
                    ("RoleSessionName", SESSION_NAME),
                    ("DurationSeconds", SESSION_SECONDS),
                    ("ExternalId", external_id.expose_secret()),
                ],
            )
            .await?;
        let r: xml::AssumeRoleResponse = xml::parse(&body)
            .map_err(|e| ApiError::new("MalformedResponse", format!("AssumeRole answer: {e}")))?;
        let c = r.assume_role_result.credentials;
        Ok(Creds {
            access_key_id: c.access_key_id,
            secret_access_key: SecretString::from(c.secret_access_key),
            session_token: Some(SecretString::from(c.session_token)),
        })
    }

    async fn caller_identity(&self, creds: &Creds) -> Result<xml::CallerIdentity, ApiError> {
        let body = self
            .sts(
                creds,
                &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
            )
            .await?;
        let r: xml::GetCallerIdentityResponse = xml::parse(&body).map_err(|e| {
            ApiError::new(
                "MalformedResponse",
                format!("GetCallerIdentity answer: {e}"),
            )
        })?;
        Ok(r.get_caller_identity_result)
    }

    /// The session and the principal to check, or the outcome every check
    /// gets when there is none.
    async fn session(&self) -> (Result<Session, Outcome>, Option<String>) {
        let started = Instant::now();
        let sts = &self.cfg.sts_endpoint;
        let fail = |code: &str, message: String| {
            Outcome::new(Status::Error, METHOD_SESSION, sts)
                .code(code)
                .message(message)
                .took(started)
        };
        let account = self.cfg.role_arn.as_deref().and_then(arn_account);
        let Some(base) = self.base_credentials() else {
            return (
                Err(fail(
                    "NoCredentials",
                    "no AWS credentials: the connector has no access key and the agent's environment has no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
                )),
                account,
            );
        };
        let creds = match &self.cfg.role_arn {
            None => base,
            Some(role) => {
                let Some(external_id) = &self.cfg.external_id else {
                    return (
                        Err(fail(
                            "MissingExternalId",
                            format!("the connector's role {role} has no external ID; sts:AssumeRole is not attempted without one"),
                        )),
                        account,
                    );
                };
                match self.assume_role(&base, role, external_id).await {
                    Ok(c) => c,
                    Err(e) => {
                        return (
                            Err(fail(
                                &e.code,
                                format!("sts:AssumeRole failed: {}", e.message),
                            )),
                            account,
                        )
                    }
                }
            }
        };
        match self.caller_identity(&creds).await {
            Ok(id) => {
                let mut principal = principal_arn(&id.arn);
                // The assumed-role ARN drops the role's path; the configured
                // ARN has it.
                if let Some(role) = &self.cfg.role_arn {
                    let name = principal.rsplit('/').next().unwrap_or_default();
                    if role.ends_with(&format!("/{name}"))
                        && arn_account(role) == arn_account(&principal)
                    {
                        principal = role.clone();
                    }
                }
                let account = id.account.or_else(|| arn_account(&principal)).or(account);
                (
                    Ok(Session {
                        creds,
                        principal,
                        simulate_unavailable: None,
                        policies: None,
                        attached: None,
                    }),
                    account,
                )
            }
            Err(e) => (
                Err(fail(
                    &e.code,
                    format!("sts:GetCallerIdentity failed: {}", e.message),
                )),
                account,
            ),
        }
    }

    async fn simulate(&self, s: &Session, action: &str) -> Result<Outcome, ApiError> {
        let body = self
            .iam(
                &s.creds,
                &[
                    ("Action", "SimulatePrincipalPolicy"),
                    ("Version", "2010-05-08"),
                    ("PolicySourceArn", &s.principal),
                    ("ActionNames.member.1", action),
                    ("ResourceArns.member.1", "*"),
                ],
            )
            .await?;
        let r: xml::SimulateResponse = xml::parse(&body).map_err(|e| {
            ApiError::new(
                "MalformedResponse",
                format!("SimulatePrincipalPolicy answer: {e}"),
            )
        })?;
        Ok(simulation_outcome(&r, action, &self.cfg.iam_endpoint))
    }

    /// Every page of a paginated listing.
    async fn pages<T>(
        &self,
        s: &Session,
        params: &[(&str, &str)],
        mut read: impl FnMut(&str, &mut Vec<T>) -> Result<Option<String>, String>,
    ) -> Result<Vec<T>, ApiError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..100 {
            let mut p: Vec<(&str, &str)> = params.to_vec();
            if let Some(m) = &marker {
                p.push(("Marker", m));
            }
            let body = self.iam(&s.creds, &p).await?;
            marker = read(&body, &mut out).map_err(|e| {
                ApiError::new("MalformedResponse", format!("{} answer: {e}", params[0].1))
            })?;
            if marker.is_none() {
                return Ok(out);
            }
        }
        Err(ApiError::new(
            "TooManyPages",
            format!("{} did not end after 100 pages", params[0].1),
        ))
    }

    async fn list_attached(&self, s: &Session) -> Result<Vec<String>, ApiError> {
        let (kind, name) = principal_kind(&s.principal).ok_or_else(|| {
            ApiError::new(
                "UnsupportedPrincipal",
                format!("{} is not an IAM role or user", s.principal),
            )
        })?;
        let action = format!("ListAttached{kind}Policies");
        let key = format!("{kind}Name");
        self.pages(
            s,
            &[
                ("Action", action.as_str()),
                ("Version", "2010-05-08"),
                (key.as_str(), name.as_str()),
            ],
            |body, out| {
                let r: xml::ListAttachedResponse = xml::parse(body)?;
                out.extend(
                    r.result
                        .attached_policies
                        .member
                        .into_iter()
                        .map(|p| p.policy_arn),
                );
                Ok(r.result.marker.filter(|_| r.result.is_truncated))
            },
        )
        .await
    }

    /// The identity's inline and attached managed policies.
    async fn load_policies(&self, s: &mut Session) -> Result<Vec<IAMPolicy>, ApiError> {
        let (kind, name) = principal_kind(&s.principal).ok_or_else(|| {
            ApiError::new(
                "UnsupportedPrincipal",
                format!(
                    "{} is not an IAM role or user: its policies cannot be read",
                    s.principal
                ),
            )
        })?;
        let key = format!("{kind}Name");
        let list = format!("List{kind}Policies");
        let get = format!("Get{kind}Policy");
        let names: Vec<String> = self
            .pages(
                s,
                &[
                    ("Action", list.as_str()),
                    ("Version", "2010-05-08"),
                    (key.as_str(), name.as_str()),
                ],
                |body, out| {
                    let r: xml::ListPoliciesResponse = xml::parse(body)?;
                    out.extend(r.result.policy_names.member);
                    Ok(r.result.marker.filter(|_| r.result.is_truncated))
                },
            )
            .await?;
        let mut docs = Vec::new();
        for policy_name in &names {
            let body = self
                .iam(
                    &s.creds,
                    &[
                        ("Action", get.as_str()),
                        ("Version", "2010-05-08"),
                        (key.as_str(), name.as_str()),
                        ("PolicyName", policy_name.as_str()),
                    ],
                )
                .await?;
            let r: xml::GetInlinePolicyResponse = xml::parse(&body)
                .map_err(|e| ApiError::new("MalformedResponse", format!("{get} answer: {e}")))?;
            docs.push((
                format!("inline policy {policy_name}"),
                r.result.policy_document,
            ));
        }
        if s.attached.is_none() {
            s.attached = Some(self.list_attached(s).await);
        }
        let attached = s.attached.clone().unwrap_or_else(|| Ok(Vec::new()))?;
        for arn in &attached {
            let body = self
                .iam(
                    &s.creds,
                    &[
                        ("Action", "GetPolicy"),
                        ("Version", "2010-05-08"),
                        ("PolicyArn", arn),
                    ],
                )
                .await?;
            let p: xml::GetPolicyResponse = xml::parse(&body).map_err(|e| {
                ApiError::new("MalformedResponse", format!("GetPolicy answer: {e}"))
            })?;
            let version = p.get_policy_result.policy.default_version_id;
            let body = self
                .iam(
                    &s.creds,
                    &[
                        ("Action", "GetPolicyVersion"),
                        ("Version", "2010-05-08"),
                        ("PolicyArn", arn),
                        ("VersionId", &version),
                    ],
                )
                .await?;
            let v: xml::GetPolicyVersionResponse = xml::parse(&body).map_err(|e| {
                ApiError::new("MalformedResponse", format!("GetPolicyVersion answer: {e}"))
            })?;
            docs.push((
                format!("managed policy {arn}"),
                v.get_policy_version_result.policy_version.document,
            ));
        }
        docs.into_iter()
            .map(|(what, doc)| {
                local_eval::parse_policy(&decode_document(&doc))
                    .map_err(|e| ApiError::new("MalformedPolicyDocument", format!("{what}: {e}")))
            })
            .collect()
    }

    async fn local(&self, s: &mut Session, action: &str) -> Outcome {
        let ep = &self.cfg.iam_endpoint;
        if s.policies.is_none() {
            s.policies = Some(self.load_policies(s).await);
        }
        let why = s
            .simulate_unavailable
            .as_ref()
            .map(|e| format!(" [iam:SimulatePrincipalPolicy failed: {}]", e.code))
            .unwrap_or_default();
        match s.policies.as_ref() {
            Some(Ok(policies)) => match local_eval::evaluate(policies, &s.principal, action) {
                Ok(LocalDecision::Allowed) => Outcome::new(Status::Granted, METHOD_LOCAL, ep)
                    .message(format!("{CAVEAT}{why}")),
                Ok(d) => Outcome::new(Status::Denied, METHOD_LOCAL, ep)
                    .code(d.as_str())
                    .message(format!("{CAVEAT}{why}")),
                Err(e) => Outcome::new(Status::Error, METHOD_LOCAL, ep)
                    .code("LocalEvaluationError")
                    .message(e),
            },
            Some(Err(e)) => Outcome::new(Status::Error, METHOD_LOCAL, ep)
                .code(&e.code)
                .message(format!(
                    "reading the identity's policies for local evaluation failed: {}{why}",
                    e.message
                )),
            None => Outcome::new(Status::Error, METHOD_LOCAL, ep).code("NoResult"),
        }
    }

    async fn permission(&self, s: &mut Session, action: &str) -> Outcome {
        let ep = self.cfg.iam_endpoint.clone();
        if !valid_action(action) {
            return Outcome::new(Status::Skipped, METHOD_SIMULATE, &ep)
                .code("UnsupportedAction")
                .message(format!("{action:?} is not an AWS action (service:Action)"));
        }
        let try_api = match self.cfg.simulation {
            Simulation::Local => false,
            Simulation::Api => true,
            Simulation::Auto => s.simulate_unavailable.is_none(),
        };
        if try_api {
            match self.simulate(s, action).await {
                Ok(o) => return o,
                Err(e) if self.cfg.simulation == Simulation::Api => {
                    return Outcome::new(status_for_error(&e.code), METHOD_SIMULATE, &ep)
                        .code(&e.code)
                        .message(format!("iam:SimulatePrincipalPolicy failed: {}", e.message));
                }
                // A passing failure (throttled, unreachable) says nothing of
                // whether simulation is available: this check errs, the
                // next one tries again.
                Err(e)
                    if matches!(
                        e.code.as_str(),
                        "Throttling"
                            | "ThrottlingException"
                            | "RequestLimitExceeded"
                            | "RequestFailed"
                    ) =>
                {
                    return Outcome::new(Status::Error, METHOD_SIMULATE, &ep)
                        .code(&e.code)
                        .message(format!("iam:SimulatePrincipalPolicy failed: {}", e.message));
                }
                Err(e) => {
                    tracing::info!(code = %e.code, "iam:SimulatePrincipalPolicy is not available; evaluating the identity's policies locally");
                    s.simulate_unavailable = Some(e);
                }
            }
        }
        self.local(s, action).await
    }

    async fn attachment(&self, s: &mut Session, policy_arn: &str) -> Outcome {
        let ep = &self.cfg.iam_endpoint;
        if s.attached.is_none() {
            s.attached = Some(self.list_attached(s).await);
        }
        match s.attached.as_ref() {
            Some(Ok(arns)) if arns.iter().any(|a| a == policy_arn) => {
                Outcome::new(Status::Granted, METHOD_ATTACHED, ep)
            }
            Some(Ok(_)) => Outcome::new(Status::Denied, METHOD_ATTACHED, ep)
                .code("PolicyNotAttached")
                .message(format!("{policy_arn} is not attached to {}", s.principal)),
            Some(Err(e)) => Outcome::new(status_for_error(&e.code), METHOD_ATTACHED, ep)
                .code(&e.code)
                .message(format!("iam:ListAttached*Policies failed: {}", e.message)),
            None => Outcome::new(Status::Error, METHOD_ATTACHED, ep).code("NoResult"),
        }
    }
}

/// RFC 3986 strict: everything but the unreserved characters is escaped.
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A Query-API form body, escaped as the AWS SDKs escape it (`*` as `%2A`,
/// space as `%20`): a service that rebuilds the body from its parameters to
/// check the signature gets the same bytes.
pub fn query_body(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, QUERY),
                percent_encoding::utf8_percent_encode(v, QUERY)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Policy documents come URL-encoded from IAM (RFC 3986); a plain JSON
/// document is taken as it is.
pub fn decode_document(doc: &str) -> String {
    if doc.trim_start().starts_with('{') {
        return doc.to_owned();
    }
    percent_encoding::percent_decode_str(doc)
        .decode_utf8_lossy()
        .into_owned()
}

/// `service:Action`, as IAM names actions.
pub fn valid_action(action: &str) -> bool {
    action.split_once(':').is_some_and(|(svc, name)| {
        !svc.is_empty()
            && !name.is_empty()
            && svc.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '?')
    })
}

/// A `SimulatePrincipalPolicy` answer for one action.
pub fn simulation_outcome(r: &xml::SimulateResponse, action: &str, endpoint: &str) -> Outcome {
    let results = &r.simulate_principal_policy_result.evaluation_results.member;
    let result = results
        .iter()
        .find(|e| e.eval_action_name.eq_ignore_ascii_case(action))
        .or(results.first());
    match result.map(|e| e.eval_decision.as_str()) {
        Some(d) if d.eq_ignore_ascii_case("allowed") => {
            Outcome::new(Status::Granted, METHOD_SIMULATE, endpoint)
        }
        Some(d) => Outcome::new(Status::Denied, METHOD_SIMULATE, endpoint).code(d),
        None => Outcome::new(Status::Error, METHOD_SIMULATE, endpoint)
            .code("NoSimulationResult")
            .message("iam:SimulatePrincipalPolicy returned no evaluation result"),
    }
}

impl Verifier for AwsVerifier<'_> {
    async fn check(&self, checks: &[Check]) -> Report {
        let (session, account) = self.session().await;
        let region = Some(self.cfg.region.clone());
        let mut s = match session {
            Ok(s) => s,
            Err(o) => {
                return Report {
                    account,
                    region,
                    outcomes: all(checks, o),
                }
            }
        };
        let mut outcomes = Vec::with_capacity(checks.len());
        for c in checks {
            let started = Instant::now();
            let o = match &c.kind {
                Kind::Permission => self.permission(&mut s, &c.action).await,
                Kind::Attachment(arn) => self.attachment(&mut s, arn).await,
                Kind::UnsupportedVersion => {
                    Outcome::new(Status::Skipped, "none", "").code("UnsupportedVersion")
                }
            };
            outcomes.push(o.took(started));
        }
        Report {
            account,
            region,
            outcomes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assumed_role_arns_become_role_arns() {
        assert_eq!(
            principal_arn("arn:aws:sts::123456789012:assumed-role/Verifier/flotilla-verifier"),
            "arn:aws:iam::123456789012:role/Verifier"
        );
        assert_eq!(
            principal_arn("arn:aws-us-gov:sts::111122223333:assumed-role/R/s"),
            "arn:aws-us-gov:iam::111122223333:role/R"
        );
        assert_eq!(
            principal_arn("arn:aws:iam::123456789012:user/alice"),
            "arn:aws:iam::123456789012:user/alice"
        );
        assert_eq!(principal_arn("not an arn"), "not an arn");
        assert_eq!(
            arn_account("arn:aws:iam::123456789012:role/x").as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            principal_kind("arn:aws:iam::1:role/service-role/Name"),
            Some(("Role", "Name".to_owned()))
        );
        assert_eq!(principal_kind("arn:aws:iam::1:root"), None);
    }

    #[test]
    fn errors_map_to_statuses() {
        for c in [
            "AccessDenied",
            "AccessDeniedException",
            "UnauthorizedOperation",
            "Forbidden",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AuthorizationError",
            "UnauthorizedAccess",
        ] {
            assert_eq!(status_for_error(c), Status::Denied, "{c}");
        }
        for c in ["Throttling", "NoSuchEntity", "InternalFailure", "HTTP500"] {
            assert_eq!(status_for_error(c), Status::Error, "{c}");
        }
        assert_eq!(status_for_error("UnsupportedOperation"), Status::Skipped);
        assert!(valid_action("cloudtrail:LookupEvents"));
        assert!(valid_action("elasticloadbalancing:Describe*"));
        assert!(!valid_action("LookupEvents"));
        assert!(!valid_action("s3:"));
    }

    #[test]
    fn config_defaults_and_checks() {
        let c = AwsConfig::parse(
            &serde_json::json!({"role_arn": "", "external_id": "", "default_region": "eu-west-1"}),
        )
        .unwrap();
        assert!(
            c.role_arn.is_none() && c.external_id.is_none(),
            "empty is absent"
        );
        assert_eq!(c.sts_endpoint, "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(c.iam_endpoint, "https://iam.amazonaws.com");
        assert_eq!(c.simulation, Simulation::Auto);
        assert!(AwsConfig::parse(&serde_json::json!({"simulation": "maybe"})).is_err());
        assert!(AwsConfig::parse(&serde_json::json!({"sts_endpoint": "ftp://x"})).is_err());
        // A region or an endpoint that would move the host is refused.
        assert!(
            AwsConfig::parse(&serde_json::json!({"default_region": "@evil.example/x#"})).is_err()
        );
        assert!(
            AwsConfig::parse(&serde_json::json!({"sts_endpoint": "https://u:p@sts.example"}))
                .is_err()
        );
        assert_eq!(
            decode_document("%7B%22Version%22%3A%222012-10-17%22%7D"),
            "{\"Version\":\"2012-10-17\"}"
        );
        assert_eq!(decode_document("{\"a\": \"100%\"}"), "{\"a\": \"100%\"}");
        assert_eq!(
            query_body(&[
                ("ResourceArns.member.1", "*"),
                ("RoleArn", "arn:aws:iam::1:role/a b+c~")
            ]),
            "ResourceArns.member.1=%2A&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa%20b%2Bc~"
        );
    }

    const ASSUME_ROLE: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>DevUser123</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/Verifier/flotilla-verifier</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:flotilla-verifier</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>IQoJb3JpZ2luX2VjEXAMPLETOKEN</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-12-02T18:00:00Z</Expiration>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
    <PackedPolicySize>8</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;

    const CALLER: &str = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::123456789012:assumed-role/Verifier/flotilla-verifier</Arn>
    <UserId>AROA3XFRBF535PLBIFPI4:flotilla-verifier</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;

    pub const SIMULATE: &str = r#"<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <SimulatePrincipalPolicyResult>
    <IsTruncated>false</IsTruncated>
    <EvaluationResults>
      <member>
        <MatchedStatements>
          <member><SourcePolicyId>cloudtrail-read</SourcePolicyId><SourcePolicyType>IAM Policy</SourcePolicyType></member>
        </MatchedStatements>
        <MissingContextValues/>
        <EvalResourceName>*</EvalResourceName>
        <EvalDecision>allowed</EvalDecision>
        <EvalActionName>cloudtrail:LookupEvents</EvalActionName>
      </member>
    </EvaluationResults>
  </SimulatePrincipalPolicyResult>
  <ResponseMetadata><RequestId>004d7059-4c14-11e5-b121-bd8c7EXAMPLE</RequestId></ResponseMetadata>
</SimulatePrincipalPolicyResponse>"#;

    const ACCESS_DENIED: &str = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>Sender</Type>
    <Code>AccessDenied</Code>
    <Message>User: arn:aws:iam::111111111111:user/verifier is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/Verifier</Message>
  </Error>
  <RequestId>5b8a2f4e-9b52-4a5e-8d7e-EXAMPLE</RequestId>
</ErrorResponse>"#;

    #[test]
    fn recorded_sts_and_iam_answers_parse() {
        let r: xml::AssumeRoleResponse = xml::parse(ASSUME_ROLE).unwrap();
        assert_eq!(
            r.assume_role_result.credentials.access_key_id,
            "ASIAIOSFODNN7EXAMPLE"
        );
        assert_eq!(
            r.assume_role_result.credentials.session_token,
            "IQoJb3JpZ2luX2VjEXAMPLETOKEN"
        );
        let c: xml::GetCallerIdentityResponse = xml::parse(CALLER).unwrap();
        assert_eq!(
            c.get_caller_identity_result.account.as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            principal_arn(&c.get_caller_identity_result.arn),
            "arn:aws:iam::123456789012:role/Verifier"
        );

        let s: xml::SimulateResponse = xml::parse(SIMULATE).unwrap();
        assert_eq!(
            simulation_outcome(&s, "cloudtrail:LookupEvents", "e").status,
            Status::Granted
        );
        let deny = SIMULATE.replace(">allowed<", ">implicitDeny<");
        let s: xml::SimulateResponse = xml::parse(&deny).unwrap();
        let o = simulation_outcome(&s, "cloudtrail:LookupEvents", "e");
        assert_eq!(
            (o.status, o.error_code.as_deref()),
            (Status::Denied, Some("implicitDeny"))
        );
        let explicit = SIMULATE.replace(">allowed<", ">explicitDeny<");
        let s: xml::SimulateResponse = xml::parse(&explicit).unwrap();
        assert_eq!(
            simulation_outcome(&s, "cloudtrail:LookupEvents", "e")
                .error_code
                .as_deref(),
            Some("explicitDeny")
        );
        let empty = r#"<SimulatePrincipalPolicyResponse><SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults/></SimulatePrincipalPolicyResult></SimulatePrincipalPolicyResponse>"#;
        let s: xml::SimulateResponse = xml::parse(empty).unwrap();
        let o = simulation_outcome(&s, "cloudtrail:LookupEvents", "e");
        assert_eq!(
            (o.status, o.error_code.as_deref()),
            (Status::Error, Some("NoSimulationResult"))
        );

        let (code, message) = xml::error(ACCESS_DENIED).unwrap();
        assert_eq!(code, "AccessDenied");
        assert!(message.contains("not authorized to perform: sts:AssumeRole"));
        let ec2 = "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>no</Message></Error></Errors><RequestID>x</RequestID></Response>";
        assert_eq!(xml::error(ec2).unwrap().0, "UnauthorizedOperation");
        assert!(xml::error("<html>Internal Server Error</html>").is_none());
        assert!(xml::error(CALLER).is_none());

        let attached = r#"<ListAttachedRolePoliciesResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <ListAttachedRolePoliciesResult>
    <AttachedPolicies>
      <member><PolicyName>SecurityAudit</PolicyName><PolicyArn>arn:aws:iam::aws:policy/SecurityAudit</PolicyArn></member>
      <member><PolicyName>ReadOnly</PolicyName><PolicyArn>arn:aws:iam::aws:policy/ReadOnlyAccess</PolicyArn></member>
    </AttachedPolicies>
    <IsTruncated>true</IsTruncated>
    <Marker>page2</Marker>
  </ListAttachedRolePoliciesResult>
</ListAttachedRolePoliciesResponse>"#;
        let a: xml::ListAttachedResponse = xml::parse(attached).unwrap();
        assert_eq!(a.result.attached_policies.member.len(), 2);
        assert_eq!(
            (a.result.is_truncated, a.result.marker.as_deref()),
            (true, Some("page2"))
        );
        let names = r#"<ListUserPoliciesResponse><ListUserPoliciesResult><PolicyNames><member>a</member><member>b</member></PolicyNames><IsTruncated>false</IsTruncated></ListUserPoliciesResult></ListUserPoliciesResponse>"#;
        let n: xml::ListPoliciesResponse = xml::parse(names).unwrap();
        assert_eq!(n.result.policy_names.member, vec!["a", "b"]);
        let none = r#"<ListRolePoliciesResponse><ListRolePoliciesResult><PolicyNames/><IsTruncated>false</IsTruncated></ListRolePoliciesResult></ListRolePoliciesResponse>"#;
        let n: xml::ListPoliciesResponse = xml::parse(none).unwrap();
        assert!(n.result.policy_names.member.is_empty());
        let version = r#"<GetPolicyVersionResponse><GetPolicyVersionResult><PolicyVersion><Document>%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D</Document><VersionId>v2</VersionId><IsDefaultVersion>true</IsDefaultVersion></PolicyVersion></GetPolicyVersionResult></GetPolicyVersionResponse>"#;
        let v: xml::GetPolicyVersionResponse = xml::parse(version).unwrap();
        assert_eq!(
            decode_document(&v.get_policy_version_result.policy_version.document),
            r#"{"Version":"2012-10-17","Statement":[]}"#
        );
    }
}
