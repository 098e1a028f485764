//! The verifier input end to end: against moto (AWS, local evaluation,
//! since moto has no `SimulatePrincipalPolicy`), against small axum fakes
//! answering recorded responses (the simulation path, Azure, GCP), with a
//! minimal `_bulk` sink in front of the output.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::{json, Value};

use super::*;
use crate::inputs::{Context, Health, Supervisor};
use crate::output::Output;

/// A `_bulk` sink: 201 per new `_id`, 409 per repeated one; keeps the
/// `(index, id, source)` of every document it accepted.
struct Sink {
    url: String,
    docs: Arc<Mutex<Vec<(String, String, Value)>>>,
}

async fn sink() -> Sink {
    let docs: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let d = docs.clone();
    let app = axum::Router::new().route(
        "/_bulk",
        axum::routing::post(move |body: Bytes| {
            let (docs, seen) = (d.clone(), seen.clone());
            async move {
                let lines: Vec<&[u8]> = body
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .collect();
                let mut items = Vec::new();
                for pair in lines.chunks(2) {
                    let meta: Value = serde_json::from_slice(pair[0]).unwrap();
                    let source: Value = serde_json::from_slice(pair[1]).unwrap();
                    let id = meta["create"]["_id"].as_str().unwrap().to_owned();
                    let index = meta["create"]["_index"].as_str().unwrap().to_owned();
                    let status = if seen.lock().unwrap().insert(id.clone()) {
                        docs.lock().unwrap().push((index, id, source));
                        201
                    } else {
                        409
                    };
                    items.push(json!({"create": {"status": status}}));
                }
                axum::Json(json!({"errors": false, "items": items}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Sink { url, docs }
}

/// One request a fake cloud got.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: String,
}

impl Req {
    fn form(&self) -> BTreeMap<String, String> {
        form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
}

type Handler = dyn Fn(&Req) -> (u16, String) + Send + Sync;

/// A fake cloud API: every request goes to `handler`, and is logged.
struct Fake {
    url: String,
    log: Arc<Mutex<Vec<Req>>>,
}

async fn fake(handler: impl Fn(&Req) -> (u16, String) + Send + Sync + 'static) -> Fake {
    let log: Arc<Mutex<Vec<Req>>> = Arc::default();
    let handler: Arc<Handler> = Arc::new(handler);
    let l = log.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (log, handler) = (l.clone(), handler.clone());
            async move {
                let req = Req {
                    method,
                    path: uri
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default(),
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let (status, body) = handler(&req);
                log.lock().unwrap().push(req);
                (axum::http::StatusCode::from_u16(status).unwrap(), body)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fake { url, log }
}

fn context(dir: &std::path::Path) -> Context {
    Context {
        state_dir: dir.to_owned(),
        agent_id: "agent-1".into(),
        host_name: "host-1".into(),
    }
}

fn no_env() -> Env {
    Arc::new(|_: &str| None)
}

fn env_of(pairs: &[(&str, &str)]) -> Env {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Arc::new(move |k: &str| map.get(k).cloned())
}

/// An input as the server renders it, with one stream.
fn input(verification: &str, provider: &str, block: Value, integrations: Value) -> Value {
    let mut stream = json!({
        "id": "permission_verifier-flotilla_verifier.permission-pp1",
        "data_stream": {"type": "logs", "dataset": "flotilla_verifier.permission"},
        "identity_federation": {"id": "cc-1", "name": "prod connector", "namespace": "default", "account_type": "single-account"},
        "verification": {"id": verification, "type": "on_demand"},
        "provider": provider,
        "policies": [{"policy_id": "pol-1", "policy_name": "Cloud logs", "integrations": integrations}],
    });
    stream[provider] = block;
    json!({"id": "permission_verifier-verifier-pp1", "type": "permission_verifier", "use_output": "default",
        "data_stream": {"namespace": "default"}, "meta": {"package": {"name": "flotilla_verifier", "version": "1.0.0"}},
        "streams": [stream]})
}

fn integration(pp: &str, actions: &[&str], attachments: &[&str]) -> Value {
    json!({"package_policy_id": pp, "policy_template": "cloudtrail", "package_name": "aws", "package_title": "AWS",
        "package_version": "2.1.0",
        "permissions": actions.iter().map(|a| json!({"action": a, "required": true})).collect::<Vec<_>>(),
        "attachments": attachments.iter().map(|a| json!({"policy_arn": a, "required": true})).collect::<Vec<_>>(),
        "unsupported_version": false})
}

struct Run {
    result: RunResult,
    /// By `permission.action`.
    docs: BTreeMap<String, Value>,
    all: Vec<(String, String, Value)>,
}

async fn run(dir: &std::path::Path, input: &Value, env: Env) -> Run {
    let sink = sink().await;
    let cfg = parse(input, &input["streams"][0], "default", 0).unwrap();
    let output = Output::new(vec![sink.url.clone()], "id:key").unwrap();
    let health = Health::default();
    let result = run_stream(&context(dir), &cfg, &output, &health, &env).await;
    let all = sink.docs.lock().unwrap().clone();
    let docs = all
        .iter()
        .map(|(_, _, s)| {
            (
                s["permission"]["action"].as_str().unwrap().to_owned(),
                s.clone(),
            )
        })
        .collect();
    Run { result, docs, all }
}

fn status(r: &Run, action: &str) -> (String, Option<String>) {
    let p = &r
        .docs
        .get(action)
        .unwrap_or_else(|| panic!("no document for {action}: {:?}", r.docs.keys()))["permission"];
    (
        p["status"].as_str().unwrap().to_owned(),
        p["error_code"].as_str().map(str::to_owned),
    )
}

fn st(s: &str, code: Option<&str>) -> (String, Option<String>) {
    (s.to_owned(), code.map(str::to_owned))
}

const ACTIONS: &[&str] = &[
    "cloudtrail:LookupEvents",
    "cloudtrail:DescribeTrails",
    "s3:GetObject",
];
const AUDIT: &str = "arn:aws:iam::aws:policy/SecurityAudit";
const READ_ONLY: &str = "arn:aws:iam::aws:policy/ReadOnlyAccess";

fn moto() -> Option<&'static flotilla_testkit::moto::Moto> {
    flotilla_testkit::moto::shared()
}

/// The verifier's own user, made once per test process.
fn verifier_user(m: &flotilla_testkit::moto::Moto) -> &'static flotilla_testkit::moto::AccessKey {
    static USER: std::sync::OnceLock<flotilla_testkit::moto::AccessKey> =
        std::sync::OnceLock::new();
    USER.get_or_init(|| m.create_user("flotilla-verifier-platform", &[]))
}

fn aws_block(m: &flotilla_testkit::moto::Moto, role: &str, external_id: &str, keys: bool) -> Value {
    let u = verifier_user(m);
    let mut b = json!({"role_arn": role, "external_id": external_id, "default_region": "us-east-1",
        "sts_endpoint": m.endpoint(), "iam_endpoint": m.endpoint()});
    if keys {
        b["access_key_id"] = json!(u.access_key_id);
        b["secret_access_key"] = json!(u.secret_access_key);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_role_with_every_action_is_granted_by_local_evaluation_and_attachments_are_checked() {
    let Some(m) = moto() else { return };
    let user = verifier_user(m);
    let role = m.create_role(&flotilla_testkit::moto::RoleSpec {
        name: "VerifierAll",
        trusted: &user.user_arn,
        external_id: Some("ext-all-1"),
        actions: ACTIONS,
        managed: &[AUDIT],
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let inp = input(
        "ver-all",
        "aws",
        aws_block(m, &role, "ext-all-1", true),
        json!([integration("pp-ct", ACTIONS, &[AUDIT, READ_ONLY])]),
    );
    let r = run(tmp.path(), &inp, no_env()).await;
    for a in ACTIONS {
        assert_eq!(status(&r, a), st("granted", None), "{a}");
        let d = &r.docs[*a];
        assert_eq!(d["verification"]["method"], "local_simulation");
        let note = d["permission"]["error_message"].as_str().unwrap();
        assert!(
            note.contains("SCPs")
                && note.ends_with("[iam:SimulatePrincipalPolicy failed: HTTP500]"),
            "{note}"
        );
    }
    assert_eq!(
        status(&r, &format!("attached:{AUDIT}")),
        st("granted", None)
    );
    assert_eq!(
        status(&r, &format!("attached:{READ_ONLY}")),
        st("denied", Some("PolicyNotAttached"))
    );
    assert_eq!(
        r.result,
        RunResult::Checked {
            summary: "checked 5 permissions: 4 granted, 1 denied, 0 error".into(),
            complete: true
        }
    );
    // The full document of one check.
    let (index, id, d) = r
        .all
        .iter()
        .find(|(_, _, s)| s["permission"]["action"] == "cloudtrail:LookupEvents")
        .unwrap();
    assert_eq!(index, "logs-flotilla_verifier.permission-default");
    assert_eq!(
        id,
        &crate::inputs::doc_id(&["ver-all", "pp-ct", "cloudtrail:LookupEvents"])
    );
    assert_eq!(
        d["message"],
        "Permission check: aws/cloudtrail:LookupEvents - granted"
    );
    assert_eq!(
        d["data_stream"],
        json!({"type": "logs", "dataset": "flotilla_verifier.permission", "namespace": "default"})
    );
    assert_eq!(d["service"]["name"], "permission-verifier");
    assert_eq!(d["identity_federation"]["id"], "cc-1");
    assert_eq!(d["identity_federation"]["name"], "prod connector");
    assert_eq!(d["identity_federation"]["namespace"], "default");
    assert_eq!(d["verification"]["id"], "ver-all");
    assert_eq!(d["verification"]["type"], "on_demand");
    assert_eq!(d["verification"]["endpoint"], m.endpoint());
    assert!(d["verification"]["duration_ms"].is_u64());
    assert_eq!(d["policy"], json!({"id": "pol-1", "name": "Cloud logs"}));
    assert_eq!(d["policy_template"], "cloudtrail");
    assert_eq!(
        d["package"],
        json!({"name": "aws", "title": "AWS", "version": "2.1.0"})
    );
    assert_eq!(d["package_policy"]["id"], "pp-ct");
    assert_eq!(
        d["provider"],
        json!({"type": "aws", "account": "123456789012", "region": "us-east-1"})
    );
    assert_eq!(d["permission"]["required"], true);
    assert!(d["permission"].get("error_code").is_none());
    assert_eq!(d["agent"]["id"], "agent-1");
    assert_eq!(d["host"]["name"], "host-1");
    // One run, one verified_at, also the @timestamp.
    let at: HashSet<&str> = r
        .all
        .iter()
        .map(|(_, _, s)| s["verification"]["verified_at"].as_str().unwrap())
        .collect();
    assert_eq!(at.len(), 1);
    assert!(chrono::DateTime::parse_from_rfc3339(at.iter().next().unwrap()).is_ok());
    assert_eq!(d["@timestamp"], d["verification"]["verified_at"]);
    // No secret anywhere.
    let text = serde_json::to_string(&r.all).unwrap();
    assert!(!text.contains("ext-all-1") && !text.contains(&user.secret_access_key));
    // The marker is plain and has no secret either.
    let marker: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(marker.len(), 1, "{marker:?}");
    let m_text = std::fs::read_to_string(&marker[0]).unwrap();
    assert!(m_text.contains("ver-all") && !m_text.contains("ext-all-1"));

    assert!(m_text.contains("\"state\":\"done\""), "{m_text}");
    // The same verification again: nothing is checked or sent.
    let again = run(tmp.path(), &inp, no_env()).await;
    assert!(
        matches!(again.result, RunResult::AlreadyDone(ref s) if s.contains("4 granted")),
        "{:?}",
        again.result
    );
    assert!(again.all.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_role_missing_an_action_has_it_denied_with_the_environment_identity() {
    let Some(m) = moto() else { return };
    let user = verifier_user(m);
    let role = m.create_role(&flotilla_testkit::moto::RoleSpec {
        name: "VerifierPartial",
        trusted: &user.user_arn,
        external_id: Some("ext-partial-1"),
        actions: &ACTIONS[..2],
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    // No key in the connector: the agent's environment is the identity.
    let inp = input(
        "ver-partial",
        "aws",
        aws_block(m, &role, "ext-partial-1", false),
        json!([integration("pp-ct", ACTIONS, &[])]),
    );
    let env = env_of(&[
        ("AWS_ACCESS_KEY_ID", &user.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", &user.secret_access_key),
    ]);
    let r = run(tmp.path(), &inp, env).await;
    assert_eq!(status(&r, ACTIONS[0]), st("granted", None));
    assert_eq!(status(&r, ACTIONS[1]), st("granted", None));
    assert_eq!(
        status(&r, "s3:GetObject"),
        st("denied", Some("implicitDeny"))
    );
    assert_eq!(
        r.docs["s3:GetObject"]["verification"]["method"],
        "local_simulation"
    );

    // With neither keys nor an environment identity: every check is an error.
    let none = run(
        tmp.path(),
        &input(
            "ver-none",
            "aws",
            aws_block(m, &role, "ext-partial-1", false),
            json!([integration("pp-ct", ACTIONS, &[])]),
        ),
        no_env(),
    )
    .await;
    assert_eq!(
        status(&none, "s3:GetObject"),
        st("error", Some("NoCredentials"))
    );

    // simulation: api against moto (no SimulatePrincipalPolicy): errors, no fallback.
    let mut block = aws_block(m, &role, "ext-partial-1", true);
    block["simulation"] = json!("api");
    let api = run(
        tmp.path(),
        &input(
            "ver-api",
            "aws",
            block,
            json!([integration("pp-ct", &ACTIONS[..1], &[])]),
        ),
        no_env(),
    )
    .await;
    let (s, code) = status(&api, ACTIONS[0]);
    assert_eq!((s.as_str(), code.as_deref()), ("error", Some("HTTP500")));
    assert_eq!(
        api.docs[ACTIONS[0]]["verification"]["method"],
        "simulate_principal_policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_wrong_external_id_makes_every_check_an_assume_role_error() {
    let Some(m) = moto() else { return };
    let user = verifier_user(m);
    let role = m.create_role(&flotilla_testkit::moto::RoleSpec {
        name: "VerifierWrongExt",
        trusted: &user.user_arn,
        external_id: Some("ext-right-1"),
        actions: ACTIONS,
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let inp = input(
        "ver-wrong",
        "aws",
        aws_block(m, &role, "ext-wrong-1", true),
        json!([integration("pp-ct", ACTIONS, &[AUDIT])]),
    );
    let r = run(tmp.path(), &inp, no_env()).await;
    assert_eq!(r.docs.len(), 4);
    for d in r.docs.values() {
        assert_eq!(d["permission"]["status"], "error");
        assert_eq!(d["permission"]["error_code"], "AccessDenied");
        let msg = d["permission"]["error_message"].as_str().unwrap();
        assert!(msg.starts_with("sts:AssumeRole failed: "), "{msg}");
        assert!(
            msg.len() > "sts:AssumeRole failed: ".len(),
            "carries AWS's message: {msg}"
        );
        assert_eq!(
            d["provider"]["account"], "123456789012",
            "from the role ARN"
        );
    }
    assert!(
        matches!(r.result, RunResult::Checked { ref summary, .. } if summary.ends_with("0 granted, 0 denied, 4 error"))
    );
}

/// The fake STS + IAM of the simulation tests: recorded answers.
fn aws_fake_answer(req: &Req, assume_ok: bool) -> (u16, String) {
    let f = req.form();
    match f.get("Action").map(String::as_str) {
        Some("AssumeRole") if assume_ok => (200, ASSUME_ROLE_XML.into()),
        Some("AssumeRole") => (403, ACCESS_DENIED_XML.into()),
        Some("GetCallerIdentity") => (200, CALLER_XML.into()),
        Some("SimulatePrincipalPolicy") => {
            let action = f.get("ActionNames.member.1").cloned().unwrap_or_default();
            let decision = match action.as_str() {
                "cloudtrail:LookupEvents" => Some("allowed"),
                "cloudtrail:DescribeTrails" => Some("implicitDeny"),
                "sqs:DeleteMessage" => Some("explicitDeny"),
                _ => None,
            };
            let results = decision
                .map(|d| format!("<member><EvalActionName>{action}</EvalActionName><EvalResourceName>*</EvalResourceName><EvalDecision>{d}</EvalDecision><MatchedStatements/><MissingContextValues/></member>"))
                .unwrap_or_default();
            (200, format!("<SimulatePrincipalPolicyResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>{results}</EvaluationResults></SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>"))
        }
        Some("ListAttachedRolePolicies") => {
            // Two pages.
            if f.contains_key("Marker") {
                (200, "<ListAttachedRolePoliciesResponse><ListAttachedRolePoliciesResult><AttachedPolicies><member><PolicyName>SecurityAudit</PolicyName><PolicyArn>arn:aws:iam::aws:policy/SecurityAudit</PolicyArn></member></AttachedPolicies><IsTruncated>false</IsTruncated></ListAttachedRolePoliciesResult></ListAttachedRolePoliciesResponse>".into())
            } else {
                (200, "<ListAttachedRolePoliciesResponse><ListAttachedRolePoliciesResult><AttachedPolicies><member><PolicyName>Other</PolicyName><PolicyArn>arn:aws:iam::123456789012:policy/Other</PolicyArn></member></AttachedPolicies><IsTruncated>true</IsTruncated><Marker>p2</Marker></ListAttachedRolePoliciesResult></ListAttachedRolePoliciesResponse>".into())
            }
        }
        _ => (400, "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>unknown</Message></Error></ErrorResponse>".into()),
    }
}

const ASSUME_ROLE_XML: &str = "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/Verifier/flotilla-verifier</Arn><AssumedRoleId>AROAEXAMPLE:flotilla-verifier</AssumedRoleId></AssumedRoleUser><Credentials><AccessKeyId>ASIAFAKESESSION</AccessKeyId><SecretAccessKey>session-secret-value</SecretAccessKey><SessionToken>session-token-value</SessionToken><Expiration>2026-12-02T19:00:00Z</Expiration></Credentials></AssumeRoleResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleResponse>";
const CALLER_XML: &str = "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:assumed-role/Verifier/flotilla-verifier</Arn><UserId>AROAEXAMPLE:flotilla-verifier</UserId><Account>123456789012</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetCallerIdentityResponse>";
const ACCESS_DENIED_XML: &str = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: arn:aws:iam::111111111111:user/platform is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/Verifier</Message></Error><RequestId>r</RequestId></ErrorResponse>";

fn fake_aws_block(url: &str, external_id: &str) -> Value {
    json!({"role_arn": "arn:aws:iam::123456789012:role/Verifier", "external_id": external_id,
        "access_key_id": "AKIAPLATFORM", "secret_access_key": "platform-secret-value",
        "default_region": "eu-west-1", "sts_endpoint": url, "iam_endpoint": url, "simulation": "auto"})
}

#[tokio::test]
async fn simulation_answers_become_statuses_and_requests_are_signed() {
    let f = fake(|r| aws_fake_answer(r, true)).await;
    let tmp = tempfile::tempdir().unwrap();
    let actions = [
        "cloudtrail:LookupEvents",
        "cloudtrail:DescribeTrails",
        "sqs:DeleteMessage",
        "s3:GetObject",
        "NotAnAction",
    ];
    let mut unsupported = integration("pp-old", &["cloudtrail:LookupEvents"], &[]);
    unsupported["unsupported_version"] = json!(true);
    unsupported["package_version"] = json!("0.9.0");
    let inp = input(
        "ver-sim",
        "aws",
        fake_aws_block(&f.url, "ext-sim-1"),
        json!([
            integration("pp-ct", &actions, &[AUDIT, READ_ONLY]),
            unsupported
        ]),
    );
    let r = run(tmp.path(), &inp, no_env()).await;
    assert_eq!(status(&r, "cloudtrail:LookupEvents"), st("granted", None));
    assert_eq!(
        status(&r, "cloudtrail:DescribeTrails"),
        st("denied", Some("implicitDeny"))
    );
    assert_eq!(
        status(&r, "sqs:DeleteMessage"),
        st("denied", Some("explicitDeny"))
    );
    assert_eq!(
        status(&r, "s3:GetObject"),
        st("error", Some("NoSimulationResult"))
    );
    assert_eq!(
        status(&r, "NotAnAction"),
        st("skipped", Some("UnsupportedAction"))
    );
    assert_eq!(
        status(&r, &format!("attached:{AUDIT}")),
        st("granted", None),
        "found on page 2"
    );
    assert_eq!(
        status(&r, &format!("attached:{READ_ONLY}")),
        st("denied", Some("PolicyNotAttached"))
    );
    assert_eq!(status(&r, "*"), st("skipped", Some("UnsupportedVersion")));
    assert_eq!(r.docs["*"]["package_policy"]["id"], "pp-old");
    assert_eq!(
        r.docs["cloudtrail:LookupEvents"]["verification"]["method"],
        "simulate_principal_policy"
    );
    assert_eq!(
        r.docs["cloudtrail:LookupEvents"]["provider"]["region"],
        "eu-west-1"
    );
    assert!(r.docs["cloudtrail:LookupEvents"]["permission"]
        .get("error_message")
        .is_none());
    assert!(
        matches!(r.result, RunResult::Checked { ref summary, .. } if summary == "checked 8 permissions: 2 granted, 3 denied, 1 error, 2 skipped"),
        "{:?}",
        r.result
    );

    let log = f.log.lock().unwrap().clone();
    let assume = log
        .iter()
        .find(|q| q.form().get("Action").map(String::as_str) == Some("AssumeRole"))
        .unwrap();
    let form = assume.form();
    assert_eq!(form["RoleArn"], "arn:aws:iam::123456789012:role/Verifier");
    assert_eq!(form["RoleSessionName"], "flotilla-verifier");
    assert_eq!(form["DurationSeconds"], "900");
    assert_eq!(form["ExternalId"], "ext-sim-1");
    let auth = assume.headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAPLATFORM/"),
        "{auth}"
    );
    assert!(auth.contains("/eu-west-1/sts/aws4_request"), "{auth}");
    assert!(assume.headers.get("x-amz-security-token").is_none());
    assert_eq!(assume.method, Method::POST);
    assert_eq!(assume.path, "/");
    // Later calls use the session; IAM is signed for us-east-1.
    let sim = log
        .iter()
        .find(|q| q.form().get("Action").map(String::as_str) == Some("SimulatePrincipalPolicy"))
        .unwrap();
    let sf = sim.form();
    assert_eq!(
        sf["PolicySourceArn"],
        "arn:aws:iam::123456789012:role/Verifier"
    );
    assert_eq!(sf["ResourceArns.member.1"], "*");
    let auth = sim.headers["authorization"].to_str().unwrap();
    assert!(
        auth.contains("Credential=ASIAFAKESESSION/")
            && auth.contains("/us-east-1/iam/aws4_request"),
        "{auth}"
    );
    assert_eq!(sim.headers["x-amz-security-token"], "session-token-value");
    // ListAttachedRolePolicies was listed once for both attachment checks (2 pages).
    assert_eq!(
        log.iter()
            .filter(
                |q| q.form().get("Action").map(String::as_str) == Some("ListAttachedRolePolicies")
            )
            .count(),
        2
    );
    let docs = serde_json::to_string(&r.all).unwrap();
    for secret in [
        "ext-sim-1",
        "platform-secret-value",
        "session-secret-value",
        "session-token-value",
    ] {
        assert!(!docs.contains(secret), "{secret} in a document");
    }

    // A crash after shipping, before the marker said done: the re-run
    // checks and sends again, under the same ids and the same verified_at.
    let marker = std::fs::read_dir(tmp.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut record: Value = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    record["state"] = json!("started");
    std::fs::write(&marker, record.to_string()).unwrap();
    let again = run(tmp.path(), &inp, no_env()).await;
    assert!(matches!(
        again.result,
        RunResult::Checked { complete: true, .. }
    ));
    let ids = |r: &Run| {
        r.all
            .iter()
            .map(|(_, id, _)| id.clone())
            .collect::<HashSet<_>>()
    };
    assert_eq!(ids(&again), ids(&r));
    for (_, _, d) in &again.all {
        assert_eq!(
            d["verification"]["verified_at"],
            r.docs["cloudtrail:LookupEvents"]["verification"]["verified_at"]
        );
    }
    assert!(matches!(
        run(tmp.path(), &inp, no_env()).await.result,
        RunResult::AlreadyDone(_)
    ));
}

#[tokio::test]
async fn a_failed_assume_role_or_a_missing_external_id_is_an_error_for_every_check() {
    let f = fake(|r| aws_fake_answer(r, false)).await;
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        tmp.path(),
        &input(
            "ver-denied",
            "aws",
            fake_aws_block(&f.url, "ext-1"),
            json!([integration("pp-ct", ACTIONS, &[AUDIT])]),
        ),
        no_env(),
    )
    .await;
    assert_eq!(r.docs.len(), 4);
    for d in r.docs.values() {
        assert_eq!(d["permission"]["status"], "error");
        assert_eq!(d["permission"]["error_code"], "AccessDenied");
        assert_eq!(
            d["permission"]["error_message"],
            "sts:AssumeRole failed: User: arn:aws:iam::111111111111:user/platform is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/Verifier"
        );
    }
    assert_eq!(f.log.lock().unwrap().len(), 1, "AssumeRole only");

    // No external ID (absent or empty): refused here, no request at all.
    let g = fake(|r| aws_fake_answer(r, true)).await;
    let r = run(
        tmp.path(),
        &input(
            "ver-noext",
            "aws",
            fake_aws_block(&g.url, ""),
            json!([integration("pp-ct", ACTIONS, &[AUDIT])]),
        ),
        no_env(),
    )
    .await;
    assert_eq!(r.docs.len(), 4);
    for d in r.docs.values() {
        assert_eq!(d["permission"]["status"], "error");
        assert_eq!(d["permission"]["error_code"], "MissingExternalId");
    }
    assert!(g.log.lock().unwrap().is_empty(), "no request made");

    // An access-key connector without a role: no AssumeRole, the key's own
    // identity is checked.
    let h = fake(|r| {
        if r.form().get("Action").map(String::as_str) == Some("GetCallerIdentity") {
            return (
                200,
                CALLER_XML.replace(
                    "arn:aws:sts::123456789012:assumed-role/Verifier/flotilla-verifier",
                    "arn:aws:iam::123456789012:user/ci",
                ),
            );
        }
        aws_fake_answer(r, true)
    })
    .await;
    let block = json!({"access_key_id": "AKIAUSER", "secret_access_key": "user-secret", "sts_endpoint": h.url, "iam_endpoint": h.url, "simulation": "api"});
    let r = run(
        tmp.path(),
        &input(
            "ver-keys",
            "aws",
            block,
            json!([integration("pp-ct", &ACTIONS[..1], &[])]),
        ),
        no_env(),
    )
    .await;
    assert_eq!(status(&r, ACTIONS[0]), st("granted", None));
    let log = h.log.lock().unwrap();
    assert!(log
        .iter()
        .all(|q| q.form().get("Action").map(String::as_str) != Some("AssumeRole")));
    let sim = log
        .iter()
        .find(|q| q.form().get("Action").map(String::as_str) == Some("SimulatePrincipalPolicy"))
        .unwrap();
    assert_eq!(
        sim.form()["PolicySourceArn"],
        "arn:aws:iam::123456789012:user/ci"
    );
}

#[tokio::test]
async fn azure_permissions_are_evaluated_and_a_bad_secret_fails_every_check() {
    let f = fake(|r| {
        if r.path == "/tenant-1/oauth2/v2.0/token" {
            let form = r.form();
            assert_eq!(form["grant_type"], "client_credentials");
            assert_eq!(form["scope"], format!("{}/.default", r.headers["host"].to_str().map(|h| format!("http://{h}")).unwrap()));
            return if form["client_id"] == "client-1" && form["client_secret"] == "good-secret" {
                (200, json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "az-access-token"}).to_string())
            } else {
                (401, json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided for 'client-1' in tenant 'tenant-1'."}).to_string())
            };
        }
        if r.path == "/subscriptions/sub-1/providers/Microsoft.Authorization/permissions?api-version=2022-04-01" {
            assert_eq!(r.headers["authorization"], "Bearer az-access-token");
            return (200, json!({"value": [
                {"actions": ["*/read", "Microsoft.Insights/*"], "notActions": ["Microsoft.Insights/*/delete"], "dataActions": [], "notDataActions": []},
            ]}).to_string());
        }
        (404, json!({"error": {"code": "NotFound", "message": r.path}}).to_string())
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let block = |secret: &str| {
        json!({"tenant_id": "tenant-1", "client_id": "client-1", "client_secret": secret,
        "subscription_id": "sub-1", "login_endpoint": f.url, "management_endpoint": f.url})
    };
    let actions = [
        "Microsoft.Compute/virtualMachines/read",
        "Microsoft.Insights/diagnosticSettings/write",
        "Microsoft.Insights/logProfiles/delete",
        "Microsoft.Compute/virtualMachines/write",
    ];
    let integ = json!([integration("pp-az", &actions, &[])]);
    let r = run(
        tmp.path(),
        &input("ver-az", "azure", block("good-secret"), integ.clone()),
        no_env(),
    )
    .await;
    assert_eq!(status(&r, actions[0]), st("granted", None));
    assert_eq!(status(&r, actions[1]), st("granted", None));
    assert_eq!(
        status(&r, actions[2]),
        st("denied", Some("ActionNotPermitted")),
        "notActions"
    );
    assert_eq!(
        status(&r, actions[3]),
        st("denied", Some("ActionNotPermitted"))
    );
    let d = &r.docs[actions[0]];
    assert_eq!(d["provider"], json!({"type": "azure", "account": "sub-1"}));
    assert_eq!(d["verification"]["method"], "azure_permissions");
    assert_eq!(
        d["message"],
        format!("Permission check: azure/{} - granted", actions[0])
    );

    let bad = run(
        tmp.path(),
        &input("ver-az-bad", "azure", block("wrong-secret"), integ),
        no_env(),
    )
    .await;
    for a in actions {
        let (s, code) = status(&bad, a);
        assert_eq!(
            (s.as_str(), code.as_deref()),
            ("error", Some("invalid_client"))
        );
        let msg = bad.docs[a]["permission"]["error_message"].as_str().unwrap();
        assert!(msg.contains("Invalid client secret"), "{msg}");
        // The ids are secrets of the connector: redacted.
        assert!(
            !msg.contains("client-1") && !msg.contains("tenant-1"),
            "{msg}"
        );
    }
    let text = serde_json::to_string(&r.all).unwrap() + &serde_json::to_string(&bad.all).unwrap();
    assert!(!text.contains("good-secret") && !text.contains("az-access-token"));
}

#[tokio::test]
async fn gcp_tokens_are_exchanged_and_only_returned_permissions_are_granted() {
    let f = fake(|r| {
        let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        match r.path.as_str() {
            "/v1/token" => {
                assert_eq!(body["grant_type"], "urn:ietf:params:oauth:grant-type:token-exchange");
                assert_eq!(body["subject_token_type"], "urn:ietf:params:oauth:token-type:jwt");
                if body["subject_token"] == "subject-jwt" && body["audience"] == "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x" {
                    (200, json!({"access_token": "federated-token", "token_type": "Bearer", "expires_in": 3600}).to_string())
                } else {
                    (400, json!({"error": "invalid_grant", "error_description": "The audience in ID Token does not match the expected audience."}).to_string())
                }
            }
            "/v1/projects/-/serviceAccounts/verifier@proj-1.iam.gserviceaccount.com:generateAccessToken" => {
                assert_eq!(r.headers["authorization"], "Bearer federated-token");
                (200, json!({"accessToken": "sa-token", "expireTime": "2026-12-02T19:00:00Z"}).to_string())
            }
            "/v1/projects/proj-1:testIamPermissions" => {
                assert_eq!(r.headers["authorization"], "Bearer sa-token");
                let held = ["logging.logEntries.list", "pubsub.subscriptions.consume"];
                let granted: Vec<&Value> = body["permissions"].as_array().unwrap().iter().filter(|p| held.contains(&p.as_str().unwrap())).collect();
                (200, json!({"permissions": granted}).to_string())
            }
            other => (404, json!({"error": {"code": 404, "message": other, "status": "NOT_FOUND"}}).to_string()),
        }
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token.jwt");
    std::fs::write(&token, "subject-jwt\n").unwrap();
    let env = env_of(&[(gcp::TOKEN_FILE_ENV, token.to_str().unwrap())]);
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let block = |aud: &str| {
        json!({"service_account": "verifier@proj-1.iam.gserviceaccount.com", "audience": aud, "project_id": "proj-1",
        "sts_endpoint": f.url, "iamcredentials_endpoint": f.url, "resourcemanager_endpoint": f.url})
    };
    let perms = [
        "logging.logEntries.list",
        "pubsub.subscriptions.consume",
        "storage.objects.get",
    ];
    let integ = json!([integration("pp-gcp", &perms, &[])]);
    let r = run(&state, &input("ver-gcp", "gcp", block("//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"), integ.clone()), env.clone()).await;
    assert_eq!(status(&r, perms[0]), st("granted", None));
    assert_eq!(status(&r, perms[1]), st("granted", None));
    assert_eq!(
        status(&r, perms[2]),
        st("denied", Some("PermissionNotGranted"))
    );
    assert_eq!(
        r.docs[perms[0]]["provider"],
        json!({"type": "gcp", "account": "proj-1"})
    );
    assert_eq!(
        r.docs[perms[0]]["verification"]["method"],
        "test_iam_permissions"
    );

    let bad = run(
        &state,
        &input("ver-gcp-bad", "gcp", block("wrong-audience"), integ.clone()),
        env,
    )
    .await;
    for p in perms {
        let (s, code) = status(&bad, p);
        assert_eq!(
            (s.as_str(), code.as_deref()),
            ("error", Some("invalid_grant"))
        );
        assert!(bad.docs[p]["permission"]["error_message"]
            .as_str()
            .unwrap()
            .starts_with("STS token exchange failed: The audience"));
    }
    let missing = run(
        &state,
        &input("ver-gcp-none", "gcp", block("x"), integ),
        no_env(),
    )
    .await;
    assert_eq!(
        status(&missing, perms[0]),
        st("error", Some("MissingSubjectToken"))
    );
    let text = serde_json::to_string(&r.all).unwrap();
    assert!(
        !text.contains("subject-jwt")
            && !text.contains("sa-token")
            && !text.contains("federated-token")
    );
}

#[test]
fn streams_are_parsed_to_the_contract() {
    let inp = input(
        "v-1",
        "aws",
        json!({"role_arn": "arn:aws:iam::1:role/R", "external_id": "e"}),
        json!([
            {"package_policy_id": "pp", "permissions": [{"action": "a:B", "required": false}, {"action": ""}, "c:D"],
             "attachments": [{"policy_arn": AUDIT}], "package_name": ""}
        ]),
    );
    let c = parse(&inp, &inp["streams"][0], "prod", 0).unwrap();
    assert_eq!(c.index, "logs-flotilla_verifier.permission-prod");
    assert_eq!(c.verification_id, "v-1");
    assert_eq!(c.integrations[0].package_name, None, "empty is absent");
    let checks = c.checks();
    assert_eq!(
        checks
            .iter()
            .map(|c| (c.action.as_str(), c.required))
            .collect::<Vec<_>>(),
        vec![
            ("a:B", false),
            ("c:D", true),
            ("attached:arn:aws:iam::aws:policy/SecurityAudit", true)
        ]
    );
    let bad = |provider: &str, integrations: Value| {
        let i = input("v", provider, json!({}), integrations);
        parse(&i, &i["streams"][0], "default", 0)
            .err()
            .unwrap_or_default()
    };
    assert!(bad("oracle", json!([integration("pp", ACTIONS, &[])]))
        .contains("provider \"oracle\" is not supported"));
    assert!(bad("aws", json!([])).contains("no policies"));
    let mut no_ver = inp.clone();
    no_ver["streams"][0]["verification"]["id"] = json!("");
    assert!(parse(&no_ver, &no_ver["streams"][0], "default", 0)
        .err()
        .unwrap_or_default()
        .contains("verification.id"));
}

/// Through the supervisor: registered beside the other inputs, a bad
/// stream fails its input alone, a good one runs once and reports its
/// summary; the same verification under a new output key is not redone.
#[tokio::test]
async fn the_supervisor_runs_a_verifier_once_per_verification() {
    let f = fake(|r| aws_fake_answer(r, true)).await;
    let sink = sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let sup = Supervisor::new(context(tmp.path()));
    let good = input(
        "ver-sup",
        "aws",
        fake_aws_block(&f.url, "ext-sup"),
        json!([integration(
            "pp-ct",
            &["cloudtrail:LookupEvents", "cloudtrail:DescribeTrails"],
            &[]
        )]),
    );
    let mut bad_provider = input(
        "ver-x",
        "oracle",
        json!({}),
        json!([integration("pp", ACTIONS, &[])]),
    );
    bad_provider["id"] = json!("verifier-bad-provider");
    let mut no_policies = input("ver-y", "aws", json!({}), json!([]));
    no_policies["id"] = json!("verifier-no-policies");
    let policy = |key: &str| {
        json!({"inputs": [good, bad_provider, no_policies],
        "outputs": {"default": {"type": "elasticsearch", "hosts": [sink.url], "api_key": key}}})
    };
    sup.reconcile(&policy("k:1"));
    let component = |id: &str| {
        sup.components()
            .into_iter()
            .find(|c| c["id"] == id)
            .unwrap()
    };
    assert_eq!(component("verifier-bad-provider")["status"], "FAILED");
    assert!(component("verifier-bad-provider")["message"]
        .as_str()
        .unwrap()
        .contains("oracle"));
    assert_eq!(component("verifier-no-policies")["status"], "FAILED");
    let deadline = Instant::now() + Duration::from_secs(30);
    let good_id = "permission_verifier-verifier-pp1";
    while !component(good_id)["message"]
        .as_str()
        .unwrap()
        .starts_with("checked")
    {
        assert!(Instant::now() < deadline, "{}", component(good_id));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(component(good_id)["status"], "HEALTHY");
    assert_eq!(
        component(good_id)["message"],
        "checked 2 permissions: 1 granted, 1 denied, 0 error"
    );
    assert_eq!(sink.docs.lock().unwrap().len(), 2);
    let calls = f.log.lock().unwrap().len();

    // A new output key restarts the input; the verification is not redone.
    sup.reconcile(&policy("k:2"));
    while !component(good_id)["message"]
        .as_str()
        .unwrap()
        .contains("already done")
    {
        assert!(Instant::now() < deadline, "{}", component(good_id));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.log.lock().unwrap().len(), calls, "no cloud call");
    assert_eq!(sink.docs.lock().unwrap().len(), 2);
}

/// IAM answers for the local evaluation: an inline policy allowing
/// `cloudtrail:*`, a managed one denying `cloudtrail:DescribeTrails`
/// (documents URL-encoded, as IAM sends them).
fn iam_policies_answer(req: &Req, simulate_denied: bool) -> (u16, String) {
    let enc = |d: &str| {
        percent_encoding::utf8_percent_encode(d, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let f = req.form();
    match f.get("Action").map(String::as_str) {
        Some("SimulatePrincipalPolicy") if simulate_denied => (403, "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: arn:aws:sts::123456789012:assumed-role/Verifier/flotilla-verifier is not authorized to perform: iam:SimulatePrincipalPolicy</Message></Error></ErrorResponse>".into()),
        Some("ListRolePolicies") => {
            assert_eq!(f["RoleName"], "Verifier");
            (200, "<ListRolePoliciesResponse><ListRolePoliciesResult><PolicyNames><member>inline-ct</member></PolicyNames><IsTruncated>false</IsTruncated></ListRolePoliciesResult></ListRolePoliciesResponse>".into())
        }
        Some("GetRolePolicy") => (200, format!("<GetRolePolicyResponse><GetRolePolicyResult><RoleName>Verifier</RoleName><PolicyName>inline-ct</PolicyName><PolicyDocument>{}</PolicyDocument></GetRolePolicyResult></GetRolePolicyResponse>",
            enc(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"cloudtrail:*","Resource":"*"}]}"#))),
        Some("ListAttachedRolePolicies") => (200, "<ListAttachedRolePoliciesResponse><ListAttachedRolePoliciesResult><AttachedPolicies><member><PolicyName>NoTrails</PolicyName><PolicyArn>arn:aws:iam::123456789012:policy/NoTrails</PolicyArn></member></AttachedPolicies><IsTruncated>false</IsTruncated></ListAttachedRolePoliciesResult></ListAttachedRolePoliciesResponse>".into()),
        Some("GetPolicy") => (200, "<GetPolicyResponse><GetPolicyResult><Policy><PolicyName>NoTrails</PolicyName><DefaultVersionId>v3</DefaultVersionId><Arn>arn:aws:iam::123456789012:policy/NoTrails</Arn></Policy></GetPolicyResult></GetPolicyResponse>".into()),
        Some("GetPolicyVersion") => {
            assert_eq!(f["VersionId"], "v3");
            (200, format!("<GetPolicyVersionResponse><GetPolicyVersionResult><PolicyVersion><Document>{}</Document><VersionId>v3</VersionId><IsDefaultVersion>true</IsDefaultVersion></PolicyVersion></GetPolicyVersionResult></GetPolicyVersionResponse>",
                enc(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"cloudtrail:DescribeTrails","Resource":"*"}]}"#)))
        }
        _ => aws_fake_answer(req, true),
    }
}

#[tokio::test]
async fn a_denied_simulation_falls_back_to_local_evaluation_and_local_never_simulates() {
    let f = fake(|r| iam_policies_answer(r, true)).await;
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        tmp.path(),
        &input(
            "ver-fallback",
            "aws",
            fake_aws_block(&f.url, "ext-1"),
            json!([integration("pp-ct", ACTIONS, &[])]),
        ),
        no_env(),
    )
    .await;
    assert_eq!(status(&r, "cloudtrail:LookupEvents"), st("granted", None));
    assert_eq!(
        status(&r, "cloudtrail:DescribeTrails"),
        st("denied", Some("explicitDeny"))
    );
    assert_eq!(
        status(&r, "s3:GetObject"),
        st("denied", Some("implicitDeny"))
    );
    for d in r.docs.values() {
        assert_eq!(d["verification"]["method"], "local_simulation");
        assert!(d["permission"]["error_message"]
            .as_str()
            .unwrap()
            .ends_with("[iam:SimulatePrincipalPolicy failed: AccessDenied]"));
    }
    let count = |log: &[Req], action: &str| {
        log.iter()
            .filter(|q| q.form().get("Action").map(String::as_str) == Some(action))
            .count()
    };
    let log = f.log.lock().unwrap().clone();
    assert_eq!(
        count(&log, "SimulatePrincipalPolicy"),
        1,
        "tried once, then local for the rest"
    );
    assert_eq!(
        count(&log, "GetPolicyVersion"),
        1,
        "policies read once per run"
    );

    let g = fake(|r| iam_policies_answer(r, false)).await;
    let mut block = fake_aws_block(&g.url, "ext-1");
    block["simulation"] = json!("local");
    let r = run(
        tmp.path(),
        &input(
            "ver-local",
            "aws",
            block,
            json!([integration("pp-ct", ACTIONS, &[])]),
        ),
        no_env(),
    )
    .await;
    assert_eq!(
        status(&r, "cloudtrail:DescribeTrails"),
        st("denied", Some("explicitDeny"))
    );
    assert_eq!(count(&g.log.lock().unwrap(), "SimulatePrincipalPolicy"), 0);
    assert!(
        !r.docs["cloudtrail:LookupEvents"]["permission"]["error_message"]
            .as_str()
            .unwrap()
            .contains("SimulatePrincipalPolicy")
    );
}

#[test]
fn week_old_markers_are_pruned_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("verifier-0011223344556677.done");
    let fresh = tmp.path().join("verifier-8899aabbccddeeff.done");
    let other = tmp.path().join("checkpoint-0011223344556677.json");
    for p in [&old, &fresh, &other] {
        std::fs::write(p, b"{}").unwrap();
    }
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
    for p in [&old, &other] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    prune_markers(tmp.path());
    assert!(!old.exists());
    assert!(fresh.exists() && other.exists());
}
