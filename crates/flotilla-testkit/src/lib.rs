//! Test support shared by Flotilla's test suites.
//!
//! [`postgres`] gives each test binary one throwaway PostgreSQL cluster
//! (initdb + pg_ctl in a temp dir, on a free port) and each test its own
//! database in it. When PostgreSQL is not installed the tests that need it
//! are skipped — unless `FLOTILLA_REQUIRE_POSTGRES=1`, which turns that into
//! a failure. `FLOTILLA_INSTALL_POSTGRES=1` lets it install PostgreSQL from
//! the distribution's packages first (as root, with apt-get); nothing is
//! installed unless asked.

#![warn(unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// Whether a missing PostgreSQL must fail the run.
pub fn postgres_required() -> bool {
    std::env::var("FLOTILLA_REQUIRE_POSTGRES")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Whether a missing PostgreSQL may be installed (`FLOTILLA_INSTALL_POSTGRES=1`).
pub fn postgres_install_allowed() -> bool {
    std::env::var("FLOTILLA_INSTALL_POSTGRES")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

pub struct PgCluster {
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
    next_db: AtomicU32,
    // Kept alive for the life of the process; the reaper removes it.
    _dir: PathBuf,
}

/// The test binary's cluster, started on first use. `None` (the test should
/// return early) when PostgreSQL is missing and not required.
pub fn postgres() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| match find_bin_dir().or_else(install) {
            None if postgres_required() => {
                panic!(
                    "FLOTILLA_REQUIRE_POSTGRES=1 but PostgreSQL (initdb, pg_ctl) is not installed \
                     (set FLOTILLA_INSTALL_POSTGRES=1 to let the tests install it, as root)"
                )
            }
            None => {
                eprintln!("PostgreSQL not installed: skipping PostgreSQL tests");
                None
            }
            Some(bin) => Some(PgCluster::start(bin).expect("start a throwaway PostgreSQL cluster")),
        })
        .as_ref()
}

/// Install PostgreSQL from the distribution's packages where that is
/// possible (root with apt-get), so a fresh machine can run the suite.
fn install() -> Option<PathBuf> {
    if !postgres_install_allowed()
        || !is_root()
        || Command::new("apt-get").arg("--version").output().is_err()
    {
        return None;
    }
    eprintln!("PostgreSQL not found: installing it with apt-get");
    let quiet = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let _ = quiet(&["update", "-q"]);
    if !quiet(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "postgresql",
    ]) {
        return None;
    }
    find_bin_dir()
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    fn start(bin: PathBuf) -> Result<Self> {
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "flotilla-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        if as_postgres {
            // initdb refuses to run as root: hand the directory to `postgres`.
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("chown {} to postgres failed", dir.display());
            }
        }
        let mut cluster = PgCluster {
            port: 0,
            bin,
            as_postgres,
            next_db: AtomicU32::new(0),
            _dir: dir.clone(),
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        // Ports can race with other processes; retry a few times.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c autovacuum=off -c max_connections=300",
                dir.display()
            );
            let log = dir.join("postgres.log");
            match cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    path(&data),
                    "-o",
                    &opts,
                    "-l",
                    path(&log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ) {
                Ok(()) => {
                    cluster.port = port;
                    last_err = None;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e.context("pg_ctl start"));
        }
        cluster.spawn_reaper(&data, &dir)?;
        Ok(cluster)
    }

    /// Stop the cluster and remove its files once this test process exits,
    /// however it exits (a static's destructor never runs).
    fn spawn_reaper(&self, data: &Path, dir: &Path) -> Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!(
                "runuser -u postgres -- {} -D {} -m immediate stop",
                pg_ctl.display(),
                data.display()
            )
        } else {
            format!(
                "{} -D {} -m immediate stop",
                pg_ctl.display(),
                data.display()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = dir.display()
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the cluster reaper")?;
        Ok(())
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Run SQL in the database at `url` (one from [`PgCluster::create_database`])
    /// with `psql`, bypassing Flotilla: no change event is sent.
    pub fn execute(&self, url: &str, sql: &str) {
        self.run(
            "psql",
            &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        )
        .expect("psql");
    }

    /// A fresh, empty database; returns its URL.
    pub fn create_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let port = self.port.to_string();
        self.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", &name],
        )
        .expect("createdb");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}
pub mod browser;
pub mod kibana;
pub mod moto;
pub mod python;
