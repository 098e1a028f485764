//! Third-party Python clients for end-to-end tests, installed from PyPI by
//! the tests themselves into a virtual environment under a cache directory
//! that later runs reuse (`FLOTILLA_TEST_CACHE`, else `~/.cache/flotilla-tests`).
//! A missing Python or an install that fails skips the test, unless
//! `FLOTILLA_REQUIRE_CLIENTS=1` (set by `.ci/run`), which fails it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What the environment holds: pip requirement specifiers.
pub const ELASTICSEARCH_CLIENT: &[&str] = &["elasticsearch>=9,<10"];

/// The AWS mock for the permission verifier's tests (`crate::moto`); boto3
/// comes with it.
pub const MOTO_SERVER: &[&str] = &["moto[server]>=5.2,<5.3"];

pub fn clients_required() -> bool {
    std::env::var("FLOTILLA_REQUIRE_CLIENTS")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

pub(crate) fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FLOTILLA_TEST_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/flotilla-tests")
}

fn works(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) fn install(dir: &Path, requirements: &[&str], module: &str) -> Result<PathBuf, String> {
    let python = dir.join("bin/python");
    if works(&python, module) {
        return Ok(python);
    }
    std::fs::create_dir_all(dir.parent().unwrap_or(dir)).map_err(|e| e.to_string())?;
    // Built beside, then renamed into place: a concurrent run never sees a
    // half-made environment.
    let staging = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let venv = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&staging)
        .output()
        .map_err(|e| format!("python3 is not available: {e}"))?;
    if !venv.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&venv.stderr)
        ));
    }
    let pip = Command::new(staging.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(requirements)
        .output()
        .map_err(|e| e.to_string())?;
    if !pip.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!(
            "pip install {} failed: {}",
            requirements.join(" "),
            String::from_utf8_lossy(&pip.stderr)
        ));
    }
    if std::fs::rename(&staging, dir).is_err() {
        // Another run finished first; use its environment.
        let _ = std::fs::remove_dir_all(&staging);
    }
    if works(&python, module) {
        Ok(python)
    } else {
        Err(format!("{module} does not import from {}", dir.display()))
    }
}

/// A Python interpreter with the official Elasticsearch client (9.x), or
/// `None` (skip) when it cannot be had and is not required.
pub fn elasticsearch_client() -> Option<&'static Path> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            match install(&cache_dir().join("py-elasticsearch-9"), ELASTICSEARCH_CLIENT, "elasticsearch") {
                Ok(p) => Some(p),
                Err(e) if clients_required() => panic!("FLOTILLA_REQUIRE_CLIENTS=1 but the Python elasticsearch client cannot be installed: {e}"),
                Err(e) => {
                    eprintln!("skipping: the Python elasticsearch client is not available: {e}");
                    None
                }
            }
        })
        .as_deref()
}
