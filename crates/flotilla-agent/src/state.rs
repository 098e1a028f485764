//! The agent's state directory: its identity, its last good policy and its
//! ack state, each an encrypted file written atomically.
//!
//! - One agent per directory: `agent.lock` is held (an OS file lock) for
//!   the process's life; a second agent on the directory is refused.
//! - The key: `agent.key` (32 random bytes, mode 0600) created on first
//!   start, or `FLOTILLA_AGENT_KEY` (64 hex characters) when set.
//! - Files are `FLA1` ‖ nonce ‖ AES-256-GCM(ciphertext), with
//!   `flotilla-agent:<agent id>:<kind>` as associated data, so a file moved
//!   to another agent or kind does not open.
//! - Writes: temp file, fsync, rename, fsync of the directory.
//! - A file that does not open is moved aside (`<name>.corrupt-<time>`) and
//!   reported: never used, never a crash loop.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, Context, Result};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;

const MAGIC: &[u8; 4] = b"FLA1";

/// What a state file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Agent id, server URL, access key.
    Identity,
    /// The last POLICY_CHANGE action applied, as received.
    Policy,
    /// The ack token and results not acked yet.
    Acks,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Identity => "identity.enc",
            Kind::Policy => "policy.enc",
            Kind::Acks => "acks.enc",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Identity => "identity",
            Kind::Policy => "policy",
            Kind::Acks => "acks",
        }
    }
}

pub struct StateDir {
    dir: PathBuf,
    cipher: Aes256Gcm,
    _lock: File,
}

/// What reading a state file found.
#[derive(Debug)]
pub enum Loaded<T> {
    Missing,
    Found(T),
    /// It did not open or parse: moved aside to this path.
    Refused {
        moved_to: PathBuf,
        reason: String,
    },
}

fn key_from_env() -> Result<Option<[u8; 32]>> {
    let Ok(hexed) = std::env::var("FLOTILLA_AGENT_KEY") else {
        return Ok(None);
    };
    let bytes = hex::decode(hexed.trim())
        .map_err(|_| anyhow!("FLOTILLA_AGENT_KEY must be 64 hex characters"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow!("FLOTILLA_AGENT_KEY must be 64 hex characters (32 bytes)"))?;
    Ok(Some(key))
}

#[cfg(unix)]
fn private(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
}

#[cfg(not(unix))]
fn private(_: &mut OpenOptions) {}

impl StateDir {
    /// Open (creating) the directory, take its lock, load or create the key.
    pub fn open(dir: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        private(&mut options);
        let lock_path = dir.join("agent.lock");
        let lock = options
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "another flotilla agent is running on {} (one agent per state directory)",
                dir.display()
            );
        }
        let key = match key_from_env()? {
            Some(k) => k,
            None => Self::file_key(dir)?,
        };
        Ok(StateDir {
            dir: dir.to_owned(),
            cipher: Aes256Gcm::new((&key).into()),
            _lock: lock,
        })
    }

    fn file_key(dir: &Path) -> Result<[u8; 32]> {
        let path = dir.join("agent.key");
        if let Ok(bytes) = std::fs::read(&path) {
            return bytes.try_into().map_err(|_| {
                anyhow!(
                    "{} is not a 32-byte key; move it aside to start afresh",
                    path.display()
                )
            });
        }
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        // Written beside and renamed: a crash never leaves a short key.
        let tmp = dir.join("agent.key.tmp");
        let mut options = OpenOptions::new();
        options.create(true).truncate(true).write(true);
        private(&mut options);
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(&key)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        sync_dir(dir);
        Ok(key)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn aad(agent_id: &str, kind: Kind) -> String {
        format!("flotilla-agent:{agent_id}:{}", kind.name())
    }

    /// Write a state file atomically.
    pub fn save<T: Serialize>(&self, agent_id: &str, kind: Kind, value: &T) -> Result<()> {
        let plain = serde_json::to_vec(value)?;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = Self::aad(agent_id, kind);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("cannot encrypt the {} file", kind.name()))?;
        let mut bytes = Vec::with_capacity(4 + 12 + sealed.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        write_atomic(&self.dir, kind.file(), &bytes)
    }

    /// Read a state file; one that does not open is moved aside.
    pub fn load<T: DeserializeOwned>(&self, agent_id: &str, kind: Kind) -> Loaded<T> {
        let path = self.dir.join(kind.file());
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return self.refuse(&path, format!("cannot be read: {e}")),
        };
        let opened = (|| -> Result<T, String> {
            if bytes.len() < 4 + 12 + 16 || &bytes[..4] != MAGIC {
                return Err("is not a Flotilla agent state file".into());
            }
            let aad = Self::aad(agent_id, kind);
            let plain = self
                .cipher
                .decrypt(
                    Nonce::from_slice(&bytes[4..16]),
                    Payload {
                        msg: &bytes[16..],
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| {
                    "does not open with this agent's key (tampered, corrupted, or another agent's)"
                        .to_owned()
                })?;
            serde_json::from_slice(&plain).map_err(|e| format!("holds unreadable state: {e}"))
        })();
        match opened {
            Ok(v) => Loaded::Found(v),
            Err(reason) => self.refuse(&path, reason),
        }
    }

    fn refuse<T>(&self, path: &Path, reason: String) -> Loaded<T> {
        let moved_to = path.with_extension(format!(
            "corrupt-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
        ));
        let _ = std::fs::rename(path, &moved_to);
        sync_dir(&self.dir);
        Loaded::Refused { moved_to, reason }
    }

    /// Unenrolled: remove the key and every file moved aside (they hold
    /// old secrets the key would still open).
    pub fn remove_key_and_refused(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == "agent.key" || name.contains(".corrupt-") {
                std::fs::remove_file(&path)?;
            }
        }
        sync_dir(&self.dir);
        Ok(())
    }

    /// Remove a state file (unenrolment removes the secrets).
    pub fn remove(&self, kind: Kind) -> Result<()> {
        match std::fs::remove_file(self.dir.join(kind.file())) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Replace `dir/name` atomically: a temp file beside it (mode 0600),
/// fsync, rename, fsync of the directory. A crash leaves the old file or the
/// new one, never a mix.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut options = OpenOptions::new();
    options.create(true).truncate(true).write(true);
    private(&mut options);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn state_round_trips_and_tampering_is_refused_and_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::open(tmp.path()).unwrap();
        s.save("a1", Kind::Policy, &json!({"id": "policy:p:2"}))
            .unwrap();
        match s.load::<Value>("a1", Kind::Policy) {
            Loaded::Found(v) => assert_eq!(v["id"], "policy:p:2"),
            other => panic!("{other:?}"),
        }
        // Bound to the agent and the kind.
        assert!(matches!(
            s.load::<Value>("a2", Kind::Policy),
            Loaded::Refused { .. }
        ));
        assert!(
            matches!(s.load::<Value>("a1", Kind::Policy), Loaded::Missing),
            "moved aside"
        );
        s.save("a1", Kind::Policy, &json!({"id": "x"})).unwrap();
        let path = tmp.path().join("policy.enc");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        match s.load::<Value>("a1", Kind::Policy) {
            Loaded::Refused { moved_to, reason } => {
                assert!(moved_to.exists());
                assert!(reason.contains("does not open"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            s.load::<Value>("a1", Kind::Policy),
            Loaded::Refused { .. }
        ));
        assert!(matches!(s.load::<Value>("a1", Kind::Acks), Loaded::Missing));
    }

    #[test]
    fn one_agent_per_directory_and_the_key_survives_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::open(tmp.path()).unwrap();
        let e = StateDir::open(tmp.path())
            .err()
            .expect("a second agent is refused")
            .to_string();
        assert!(e.contains("another flotilla agent"), "{e}");
        s.save("a1", Kind::Acks, &json!({"ack_token": "t"}))
            .unwrap();
        drop(s);
        let again = StateDir::open(tmp.path()).unwrap();
        assert!(matches!(
            again.load::<Value>("a1", Kind::Acks),
            Loaded::Found(_)
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tmp.path().join("agent.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
