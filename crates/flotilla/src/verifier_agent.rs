//! The embedded verifier agent: `flotilla agent run` as a child process of
//! the server, with its own state directory, enrolled (once) into the
//! verifier's home policy with the verifier tag, restarted with backoff if
//! it dies, stopped with the server. A single machine thereby verifies
//! cloud connectors with nothing else installed.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::process::Command;
use tokio::sync::watch;

use flotilla_api::management::CreateEnrollmentKey;
use flotilla_service::Services;

/// What the supervisor needs.
pub struct EmbeddedAgent {
    pub services: Services,
    pub state_dir: PathBuf,
    pub url: String,
    pub tag: String,
    pub home_policy_id: String,
}

const KEY_NAME: &str = "embedded verifier agent";

/// Server settings the child must not inherit (it needs none of them).
const WITHHELD_ENV: &[&str] = &[
    "FLOTILLA_ADMIN_API_KEY",
    "FLOTILLA_ENCRYPTION_KEY",
    "FLOTILLA_DATABASE_URL",
    "FLOTILLA_CONFIG",
];

impl EmbeddedAgent {
    /// Run until `stop`; the child goes with it.
    pub async fn supervise(self, mut stop: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            let started = std::time::Instant::now();
            match self.start().await {
                Ok((mut child, key)) => {
                    tracing::info!(pid = child.id(), state_dir = %self.state_dir.display(), "embedded verifier agent started");
                    // Runs on its own: a child that dies at once must not
                    // leave its key usable.
                    if let Some(id) = key {
                        let services = self.services.clone();
                        let identity = self.state_dir.join("identity.enc");
                        tokio::spawn(revoke_when_enrolled(services, id, identity));
                    }
                    tokio::select! {
                        status = child.wait() => {
                            tracing::warn!(?status, "the embedded verifier agent exited; restarting it");
                            self.enrol_afresh_if_refused();
                        }
                        _ = stopped(&mut stop) => {
                            let _ = child.start_kill();
                            let _ = child.wait().await;
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not start the embedded verifier agent");
                }
            }
            // Backoff: a child that ran a while starts over at once.
            if started.elapsed() > Duration::from_secs(60) {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay =
                Duration::from_millis(250u64 << failures.min(7)).min(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// An agent the server refused (unenrolled, revoked, a restored
    /// database) would be refused forever: its state is moved aside, so
    /// the next start enrols anew.
    fn enrol_afresh_if_refused(&self) {
        let refused = flotilla_agent::run::read_status(&self.state_dir)
            .ok()
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.starts_with(flotilla_agent::run::REFUSED));
        if !refused {
            return;
        }
        let aside = self.state_dir.with_extension(format!(
            "refused-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        ));
        match std::fs::rename(&self.state_dir, &aside) {
            Ok(()) => {
                tracing::warn!(moved_to = %aside.display(), "the server refused the embedded verifier agent; it enrols again")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not move the refused verifier agent's state aside")
            }
        }
    }

    /// Revoke one-time keys left active by an earlier run (a server
    /// stopped before the agent it started had enrolled).
    async fn revoke_stale_keys(&self) {
        let m = self.services.management();
        let Ok(keys) = m
            .list_enrollment_keys(
                &flotilla_store::EnrollmentKeyFilter {
                    policy_id: Some(self.home_policy_id.clone()),
                },
                flotilla_store::Page {
                    page: 1,
                    per_page: 100,
                },
            )
            .await
        else {
            return;
        };
        for k in keys.items.iter().filter(|k| k.active && k.name == KEY_NAME) {
            let _ = m.revoke_enrollment_key(&k.id).await;
        }
    }

    /// Start the child; a fresh enrollment key (its id returned, to
    /// revoke once used) when the state directory holds no identity yet.
    async fn start(&self) -> anyhow::Result<(tokio::process::Child, Option<String>)> {
        std::fs::create_dir_all(&self.state_dir)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("agent")
            .arg("run")
            .arg("--url")
            .arg(&self.url)
            .arg("--tag")
            .arg(&self.tag)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        for k in WITHHELD_ENV {
            cmd.env_remove(k);
        }
        let mut key_id = None;
        if !self.state_dir.join("identity.enc").exists() {
            let (key, token) = self
                .services
                .management()
                .create_enrollment_key(CreateEnrollmentKey {
                    policy_id: self.home_policy_id.clone(),
                    name: Some(KEY_NAME.into()),
                    expiration: None,
                    max_uses: None,
                })
                .await?;
            // In the environment, never in argv (visible to every user).
            cmd.env("FLOTILLA_ENROLLMENT_TOKEN", token.expose_secret());
            key_id = Some(key.id);
        } else {
            cmd.env_remove("FLOTILLA_ENROLLMENT_TOKEN");
            self.revoke_stale_keys().await;
        }
        #[cfg(target_os = "linux")]
        // SAFETY: between fork and exec only an async-signal-safe system
        // call (prctl) runs; it makes the kernel kill the child when the
        // server dies, however it dies.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        Ok((cmd.spawn()?, key_id))
    }
}

/// Resolves once the server is stopping (the guard is not held across
/// the caller's awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Revoke the one-time enrollment key once the agent holds an identity
/// (or after a minute, whatever happened).
async fn revoke_when_enrolled(services: Services, key_id: String, identity: PathBuf) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !identity.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Err(e) = services.management().revoke_enrollment_key(&key_id).await {
        tracing::warn!(error = %e, "could not revoke the embedded verifier agent's enrollment key");
    }
}
