//! Where each log stream has got to: per file fingerprint, the offset the
//! output has accepted up to.
//!
//! - One plain JSON file per stream (`checkpoint-<hash of the stream id>.json`)
//!   in the state directory, written atomically (`state::write_atomic`:
//!   temp, fsync, rename, fsync of the directory) after every accepted batch.
//! - Plain, not encrypted: it holds paths and offsets only (no secret), it
//!   is written after every batch, and an operator may need to read it.
//! - A file that does not parse is moved aside and reported; the stream
//!   then starts from the beginning of each file (duplicates, never loss:
//!   the document ids are deterministic, so the output refuses them as 409).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::write_atomic;

/// One file, known by its fingerprint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileState {
    /// Where it was last seen.
    pub path: String,
    /// Bytes accepted by the output.
    pub offset: u64,
    /// Unix seconds it was last seen (entries unseen for a week are dropped).
    pub last_seen: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub files: BTreeMap<String, FileState>,
    /// Events the output accepted, over the stream's life.
    #[serde(default)]
    pub shipped: u64,
}

/// How long a file that is gone is remembered.
const FORGET_AFTER_SECS: i64 = 7 * 24 * 3600;

impl Checkpoint {
    pub fn forget_old(&mut self, now: i64) {
        self.files
            .retain(|_, f| now.saturating_sub(f.last_seen) < FORGET_AFTER_SECS);
    }
}

pub struct CheckpointFile {
    dir: PathBuf,
    name: String,
}

impl CheckpointFile {
    pub fn new(dir: &Path, stream_id: &str) -> CheckpointFile {
        let hash = hex::encode(&Sha256::digest(stream_id.as_bytes())[..8]);
        CheckpointFile {
            dir: dir.to_owned(),
            name: format!("checkpoint-{hash}.json"),
        }
    }

    /// The stored checkpoint; a warning when one was there but unreadable.
    pub fn load(&self) -> (Checkpoint, Option<String>) {
        let path = self.dir.join(&self.name);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(c) => (c, None),
                Err(e) => {
                    let moved = path.with_extension(format!(
                        "corrupt-{}",
                        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
                    ));
                    let _ = std::fs::rename(&path, &moved);
                    (
                        Checkpoint::default(),
                        Some(format!(
                            "checkpoint {} is unreadable ({e}); moved to {}; files are read again from their start",
                            path.display(),
                            moved.display()
                        )),
                    )
                }
            },
            Err(_) => (Checkpoint::default(), None),
        }
    }

    pub fn save(&self, c: &Checkpoint) -> Result<()> {
        write_atomic(&self.dir, &self.name, &serde_json::to_vec(c)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_survive_a_restart_and_a_torn_file_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let f = CheckpointFile::new(tmp.path(), "logfile-app-1");
        assert_eq!(f.load(), (Checkpoint::default(), None));
        let mut c = Checkpoint::default();
        c.files.insert(
            "ab".into(),
            FileState {
                path: "/a.log".into(),
                offset: 42,
                last_seen: 10,
            },
        );
        c.shipped = 3;
        f.save(&c).unwrap();
        let again = CheckpointFile::new(tmp.path(), "logfile-app-1");
        assert_eq!(again.load(), (c.clone(), None));
        // Another stream has its own file.
        assert_eq!(
            CheckpointFile::new(tmp.path(), "other").load().0,
            Checkpoint::default()
        );
        // No temp file left behind.
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

        std::fs::write(tmp.path().join(&f.name), b"{\"files\": {").unwrap();
        let (c2, warning) = f.load();
        assert_eq!(c2, Checkpoint::default());
        assert!(warning.unwrap().contains("unreadable"));

        c.forget_old(10 + FORGET_AFTER_SECS);
        assert!(c.files.is_empty());
    }
}
