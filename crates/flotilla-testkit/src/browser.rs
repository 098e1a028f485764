//! A headless Chromium for the console's browser tests: Debian's
//! `chromium` and `chromium-driver` (WebDriver), installed with apt-get by
//! the tests themselves when missing and possible (root). Unavailable, the
//! test is skipped with a message — unless `FLOTILLA_REQUIRE_CLIENTS=1`
//! (set by `.ci/run`), which fails it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use crate::python::clients_required;

/// The flags Chromium runs with: headless, and nothing that reaches for
/// the network on its own (on a closed network it misbehaves otherwise).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

pub struct Browser {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn found() -> Option<Browser> {
    (Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()).then(|| Browser {
        chromium: CHROMIUM.into(),
        chromedriver: CHROMEDRIVER.into(),
    })
}

fn install() -> Result<Browser, String> {
    if !crate::is_root() {
        return Err("not root, so apt-get cannot install chromium".into());
    }
    eprintln!("chromium not found: installing chromium and chromium-driver with apt-get");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("apt-get is not available: {e}"))
    };
    let _ = apt(&["update", "-q"]);
    // Another test may be installing a package at the same moment (the
    // PostgreSQL kit does): wait for dpkg's lock rather than fail.
    let out = apt(&[
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "chromium",
        "chromium-driver",
    ])?;
    if !out.status.success() {
        return Err(format!(
            "apt-get install chromium chromium-driver failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    found().ok_or_else(|| "installed, but /usr/bin/chromium or chromedriver is missing".into())
}

/// Chromium and its WebDriver, or `None` (skip) when they cannot be had
/// and are not required.
pub fn browser() -> Option<&'static Browser> {
    static BROWSER: OnceLock<Option<Browser>> = OnceLock::new();
    BROWSER
        .get_or_init(|| match found().map(Ok).unwrap_or_else(install) {
            Ok(b) => Some(b),
            Err(e) if clients_required() => {
                panic!("FLOTILLA_REQUIRE_CLIENTS=1 but headless Chromium is not available: {e}")
            }
            Err(e) => {
                eprintln!("skipping the browser test: headless Chromium is not available: {e}");
                None
            }
        })
        .as_ref()
}

/// A running chromedriver on a port it chose; killed on drop.
pub struct Driver {
    pub url: String,
    child: Child,
}

impl Browser {
    /// Start chromedriver on a free port (`--port=0`: it picks one and
    /// says which), waiting for its ready line under a deadline.
    pub fn driver(&self) -> Driver {
        let mut child = Command::new(&self.chromedriver)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().expect("chromedriver's stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
                // Keep draining so chromedriver never blocks on the pipe.
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => Driver {
                url: format!("http://127.0.0.1:{port}"),
                child,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromedriver did not say which port it listens on");
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
