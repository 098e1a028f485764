//! A throwaway AWS (moto's server, `python::MOTO_SERVER`) for the
//! permission verifier's tests, from the same cached virtual environment
//! mechanism as the other Python clients: skipped when it cannot be had,
//! unless `FLOTILLA_REQUIRE_CLIENTS=1`, which fails instead.
//!
//! - The server listens on a free loopback port with
//!   `INITIAL_NO_AUTH_ACTION_COUNT` set, so after the first three requests
//!   (which make the admin user the helpers work as) every request must be
//!   signed by a known key and be allowed by its identity's policies; a
//!   role's trust policy, `sts:ExternalId` included, is enforced then (moto
//!   lets a request with no External ID through). AWS managed policies
//!   (`arn:aws:iam::aws:policy/SecurityAudit`, …) are loaded.
//! - moto does not implement `iam:SimulatePrincipalPolicy` (it answers 500).
//! - [`Moto::start`] gives a server that is killed on drop; [`shared`] one
//!   per test process. Either dies with the test process (a watchdog thread
//!   in the server's own process), so none is left behind by a crash.
//! - The helpers run the environment's boto3 against the server as the
//!   admin: [`Moto::create_user`] (the verifier's own identity, with a key)
//!   and [`Moto::create_role`] (a role with a trust policy requiring an
//!   External ID, given actions inline, given managed policies attached).
//!
//! ```no_run
//! use flotilla_testkit::moto::{self, RoleSpec};
//!
//! let Some(aws) = moto::shared() else { return }; // skipped: no moto
//! let platform = aws.create_user("verifier-platform", &[]);
//! let role_arn = aws.create_role(&RoleSpec {
//!     name: "CustomerRole",
//!     trusted: &platform.user_arn,
//!     external_id: Some("ext-123"),
//!     actions: &["cloudtrail:LookupEvents", "s3:GetObject"],
//!     managed: &["arn:aws:iam::aws:policy/SecurityAudit"],
//!     ..RoleSpec::default()
//! });
//! // Point the verifier at `aws.endpoint()` (STS and IAM) with the
//! // platform user's key as its identity and `role_arn` / "ext-123".
//! # let _ = (role_arn, platform.access_key_id, platform.secret_access_key);
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::python::{cache_dir, clients_required, install, MOTO_SERVER};

/// The account moto puts everything in.
pub const ACCOUNT: &str = "123456789012";

/// The actions a role needs so the verifier can read its own policies
/// (local evaluation and attachment checks); [`Moto::create_role`] grants
/// them in an inline policy of their own.
pub const SELF_READ_ACTIONS: &[&str] = &[
    "iam:ListRolePolicies",
    "iam:GetRolePolicy",
    "iam:ListAttachedRolePolicies",
    "iam:GetPolicy",
    "iam:GetPolicyVersion",
    "iam:SimulatePrincipalPolicy",
];

/// A Python interpreter with moto's server and boto3, or `None` (skip).
pub fn moto_python() -> Option<&'static Path> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            match install(&cache_dir().join("py-moto-5.2"), MOTO_SERVER, "moto.server") {
                Ok(p) => Some(p),
                Err(e) if clients_required() => {
                    panic!("FLOTILLA_REQUIRE_CLIENTS=1 but moto cannot be installed: {e}")
                }
                Err(e) => {
                    eprintln!("skipping: moto is not available: {e}");
                    None
                }
            }
        })
        .as_deref()
}

/// An IAM user's identity and access key.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessKey {
    pub user_arn: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// What [`Moto::create_role`] makes.
#[derive(Debug, Clone, Default)]
pub struct RoleSpec<'a> {
    pub name: &'a str,
    /// The principal allowed to assume it (an IAM user ARN).
    pub trusted: &'a str,
    /// The `sts:ExternalId` its trust policy requires; `None`: no condition.
    pub external_id: Option<&'a str>,
    /// Allowed, on `*`, by an inline policy.
    pub actions: &'a [&'a str],
    /// Denied, on `*`, by an inline policy.
    pub denied: &'a [&'a str],
    /// Managed policy ARNs to attach. AWS managed ones come with moto; one
    /// of this account that does not exist is created (allowing
    /// `sts:GetCallerIdentity` only).
    pub managed: &'a [&'a str],
}

/// A running moto server.
pub struct Moto {
    child: Child,
    endpoint: String,
    python: PathBuf,
    admin: AccessKey,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs moto's server and exits when its parent (the test process) is gone.
const SERVER: &str = r#"
import os, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"#;

/// The setup helpers: one JSON request in argv, one JSON answer on stdout.
const SETUP: &str = r#"
import json, os, sys
import boto3
req = json.loads(sys.argv[1])
def client(svc, key, secret):
    return boto3.client(svc, endpoint_url=req["endpoint"], region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)
def doc(effect, actions):
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": effect, "Action": actions, "Resource": "*"}]})
op = req["op"]
if op == "admin":
    iam = client("iam", "bootstrap", "bootstrap")
    iam.create_user(UserName=req["name"])
    iam.put_user_policy(UserName=req["name"], PolicyName="admin", PolicyDocument=doc("Allow", "*"))
    key = iam.create_access_key(UserName=req["name"])["AccessKey"]
    arn = "arn:aws:iam::%s:user/%s" % (req["account"], req["name"])
    print(json.dumps({"user_arn": arn, "access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))
    sys.exit(0)
iam = client("iam", req["key"], req["secret"])
if op == "user":
    user = iam.create_user(UserName=req["name"])["User"]
    iam.put_user_policy(UserName=req["name"], PolicyName="assume-roles", PolicyDocument=doc("Allow", ["sts:AssumeRole"] + req["actions"]))
    key = iam.create_access_key(UserName=req["name"])["AccessKey"]
    print(json.dumps({"user_arn": user["Arn"], "access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))
elif op == "role":
    stmt = {"Effect": "Allow", "Principal": {"AWS": req["trusted"]}, "Action": "sts:AssumeRole"}
    if req.get("external_id") is not None:
        stmt["Condition"] = {"StringEquals": {"sts:ExternalId": req["external_id"]}}
    role = iam.create_role(RoleName=req["name"], AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [stmt]}))["Role"]
    iam.put_role_policy(RoleName=req["name"], PolicyName="verifier-self-read", PolicyDocument=doc("Allow", req["self_read"]))
    if req["actions"]:
        iam.put_role_policy(RoleName=req["name"], PolicyName="granted", PolicyDocument=doc("Allow", req["actions"]))
    if req["denied"]:
        iam.put_role_policy(RoleName=req["name"], PolicyName="denied", PolicyDocument=doc("Deny", req["denied"]))
    for arn in req["managed"]:
        try:
            iam.get_policy(PolicyArn=arn)
        except iam.exceptions.NoSuchEntityException:
            name = arn.rsplit("/", 1)[-1]
            iam.create_policy(PolicyName=name, PolicyDocument=doc("Allow", "sts:GetCallerIdentity"))
        iam.attach_role_policy(RoleName=req["name"], PolicyArn=arn)
    print(json.dumps({"role_arn": role["Arn"]}))
else:
    sys.exit("unknown op " + op)
"#;

/// Whether an HTTP server answers on `port` (any status).
fn answers(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/")
}

impl Moto {
    /// A new server, killed on drop; `None` (skip) when moto cannot be had
    /// and is not required.
    pub fn start() -> Option<Moto> {
        let python = moto_python()?;
        Some(Moto::spawn(python).expect("start moto's server"))
    }

    fn spawn(python: &Path) -> Result<Moto> {
        let mut last = None;
        // A free port can be taken between the probe and the bind: try again.
        for _ in 0..3 {
            let port = crate::free_port();
            let mut child = Command::new(python)
                .args(["-c", SERVER, &port.to_string()])
                .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
                .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
                .env("MOTO_ALLOW_NONEXISTENT_REGION", "true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawn moto's server")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    last = Some(format!("moto's server exited: {status}"));
                    break;
                }
                if answers(port) {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !up {
                let _ = child.kill();
                let _ = child.wait();
                last.get_or_insert_with(|| "moto's server did not answer within 60 s".into());
                continue;
            }
            let endpoint = format!("http://127.0.0.1:{port}");
            let admin = access_key(&run_setup(
                python,
                &json!({"op": "admin", "endpoint": endpoint, "name": "flotilla-test-admin", "account": ACCOUNT}),
            )?)?;
            return Ok(Moto {
                child,
                endpoint,
                python: python.to_owned(),
                admin,
            });
        }
        bail!("{}", last.unwrap_or_default())
    }

    /// `http://127.0.0.1:<port>`: the STS and IAM endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The admin the helpers work as (allowed everything).
    pub fn admin(&self) -> &AccessKey {
        &self.admin
    }

    fn setup(&self, mut req: Value) -> Result<Value> {
        req["endpoint"] = json!(self.endpoint);
        req["key"] = json!(self.admin.access_key_id);
        req["secret"] = json!(self.admin.secret_access_key);
        run_setup(&self.python, &req)
    }

    /// An IAM user with an access key, allowed `sts:AssumeRole` (and
    /// `extra_actions`) on `*`: the verifier's own identity.
    pub fn create_user(&self, name: &str, extra_actions: &[&str]) -> AccessKey {
        let v = self
            .setup(json!({"op": "user", "name": name, "actions": extra_actions}))
            .expect("create a moto user");
        access_key(&v).expect("moto user answer")
    }

    /// A role assumable by `spec.trusted` (with `spec.external_id`), holding
    /// `spec.actions`, denied `spec.denied`, with `spec.managed` attached
    /// and [`SELF_READ_ACTIONS`] in a policy of their own. Its ARN.
    pub fn create_role(&self, spec: &RoleSpec<'_>) -> String {
        let v = self
            .setup(
                json!({"op": "role", "name": spec.name, "trusted": spec.trusted,
                "external_id": spec.external_id, "actions": spec.actions, "denied": spec.denied,
                "managed": spec.managed, "self_read": SELF_READ_ACTIONS}),
            )
            .expect("create a moto role");
        v["role_arn"].as_str().expect("role_arn").to_owned()
    }
}

fn access_key(v: &Value) -> Result<AccessKey> {
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .with_context(|| format!("moto setup answer {v} has no {k}"))
    };
    Ok(AccessKey {
        user_arn: field("user_arn")?,
        access_key_id: field("access_key_id")?,
        secret_access_key: field("secret_access_key")?,
    })
}

fn run_setup(python: &Path, req: &Value) -> Result<Value> {
    let out = Command::new(python)
        .args(["-c", SETUP, &req.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("run the moto setup helper")?;
    if !out.status.success() {
        bail!(
            "moto setup {} failed: {}",
            req["op"],
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "moto setup {} printed {:?}",
            req["op"],
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One server for the whole test process (it exits with the process).
pub fn shared() -> Option<&'static Moto> {
    static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
    MOTO.get_or_init(Moto::start).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moto_enforces_the_external_id_and_lists_attachments() {
        let Some(moto) = Moto::start() else { return };
        let user = moto.create_user("kit-verifier", &[]);
        assert!(user.user_arn.ends_with(":user/kit-verifier"));
        let role = moto.create_role(&RoleSpec {
            name: "KitRole",
            trusted: &user.user_arn,
            external_id: Some("kit-ext-1"),
            actions: &["cloudtrail:LookupEvents"],
            managed: &[
                "arn:aws:iam::aws:policy/SecurityAudit",
                "arn:aws:iam::123456789012:policy/Custom",
            ],
            ..RoleSpec::default()
        });
        assert_eq!(role, format!("arn:aws:iam::{ACCOUNT}:role/KitRole"));
        let check = r#"
import json, sys, boto3
a = json.loads(sys.argv[1])
sts = boto3.client("sts", endpoint_url=a["ep"], region_name="us-east-1", aws_access_key_id=a["k"], aws_secret_access_key=a["s"])
out = {}
for ext in ["kit-ext-1", "wrong"]:
    try:
        c = sts.assume_role(RoleArn=a["role"], RoleSessionName="kit", ExternalId=ext)["Credentials"]
        out[ext] = "ok"
    except Exception as e:
        out[ext] = e.response["Error"]["Code"]
c = sts.assume_role(RoleArn=a["role"], RoleSessionName="kit", ExternalId="kit-ext-1")["Credentials"]
iam = boto3.client("iam", endpoint_url=a["ep"], region_name="us-east-1", aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
out["attached"] = sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName="KitRole")["AttachedPolicies"])
print(json.dumps(out))
"#;
        let arg = json!({"ep": moto.endpoint(), "k": user.access_key_id, "s": user.secret_access_key, "role": role});
        let out = Command::new(moto_python().unwrap())
            .args(["-c", check, &arg.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kit-ext-1"], "ok");
        assert_eq!(v["wrong"], "AccessDenied");
        assert_eq!(
            v["attached"],
            json!([
                "arn:aws:iam::123456789012:policy/Custom",
                "arn:aws:iam::aws:policy/SecurityAudit"
            ])
        );
        let pid = moto.child.id();
        drop(moto);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "moto is stopped on drop"
        );
    }
}
