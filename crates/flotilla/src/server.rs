//! `flotilla server`: open the store, bootstrap, serve.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use secrecy::ExposeSecret;

use flotilla_http::{AppState, HttpLimits};
use flotilla_service::crypto::Sealer;
use flotilla_service::Services;
use flotilla_store_sql::Location;

use crate::config::{Config, FlagOverrides, LogFormat};

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// YAML configuration file (see flotilla.reference.yml).
    #[arg(long, env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8220].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Directory for the embedded database [default: ./flotilla-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL; replaces the embedded database.
    #[arg(long)]
    pub database_url: Option<String>,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let flags = FlagOverrides {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url,
    };
    let config = Config::load(args.config.as_deref(), &flags)?;
    init_tracing(&config);
    tracing::debug!(?config, "configuration loaded");

    let location = match &config.database_url {
        Some(url) => Location::Postgres(url.expose_secret()),
        None => Location::DataDir(&config.data_dir),
    };
    tracing::info!(storage = ?location, "opening storage");
    let pool = config
        .database_pool
        .settings(matches!(location, Location::Postgres(_)));
    let store = flotilla_store_sql::open_with(location, Some(pool)).await?;
    store.set_offline_after(config.fleet.offline_after);
    let sealer = match &config.encryption_key {
        Some(key) => Sealer::from_secret(key.expose_secret().as_bytes()),
        None => Sealer::from_secret(local_encryption_key(&config.data_dir)?.as_bytes()),
    };
    let services = Services::new(store, config.fleet_settings()?, sealer);

    let max_connections = fit_connections_to_fd_limit(config.http.max_connections);
    tracing::debug!(max_connections, "connection cap");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let admin_key = config.admin_api_key.clone();
    if let Some(generated) = services
        .management()
        .bootstrap(admin_key.as_ref(), &default_output_host(&config, addr))
        .await?
    {
        // Deliberately not through tracing: shown once, never logged.
        println!(
            "admin API key (shown once, store it now): {}",
            generated.expose_secret()
        );
    }

    if let Some(dir) = &config.packages_dir {
        install_packages_dir(&services, dir).await?;
    }

    let limits = HttpLimits {
        max_body_bytes: config.http.max_body_bytes,
        max_bulk_bytes: config.http.max_bulk_bytes,
        request_timeout: config.http.request_timeout,
        max_concurrent_requests: config.http.max_concurrent_requests,
        max_concurrent_fleet_requests: config.fleet.max_concurrent_requests,
        fleet_routes: config.fleet_route_limits()?,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(flush_checkins(services.clone(), stop_rx.clone()));
    let tasks = task_manager(&config, &services).await?;
    let verifier_agent = if config.verifier.enabled && config.verifier.embedded_agent {
        // With agents of its own the operator makes this policy (it is
        // where tagged verifier agents are enrolled).
        flotilla_service::verifier::ensure_home_policy(&services, &config.verifier.service())
            .await
            .map_err(|e| anyhow::anyhow!("could not create the verifier's policy: {e}"))?;
        Some({
            let agent = crate::verifier_agent::EmbeddedAgent {
                services: services.clone(),
                state_dir: config.data_dir.join("verifier-agent"),
                url: local_url(addr),
                tag: config.verifier.agent_tag.clone(),
                home_policy_id: config.verifier.home_policy_id.clone(),
            };
            tokio::spawn(agent.supervise(stop_rx.clone()))
        })
    } else {
        None
    };
    let task_runner = config.task_manager.enabled.then(|| {
        tokio::spawn(
            tasks
                .clone()
                .run(stop_rx.clone(), config.http.shutdown_drain),
        )
    });
    let app_services = services.clone();
    let app = flotilla_http::app(
        AppState::new(services, stop_rx.clone())
            .with_tasks(tasks)
            .with_console(config.console_settings()),
        &limits,
    );
    // Handlers are installed before the ready line, so a signal sent the
    // moment the server is ready is a clean shutdown, not a kill.
    let signals = shutdown_signal()?;
    tokio::spawn(async move {
        signals.await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(%addr, "flotilla server started");
    // The ready line tests and scripts wait for.
    println!("listening on {addr}");
    let services_for_flush = app_services;
    let conn_limits = flotilla_http::ConnLimits {
        header_read_timeout: config.http.header_read_timeout,
        idle_timeout: config.http.idle_timeout,
        max_connections,
        drain: config.http.shutdown_drain,
    };
    flotilla_http::serve(listener, app, stop_rx, conn_limits).await?;
    let _ = flusher.await;
    if let Some(runner) = task_runner {
        let _ = runner.await;
    }
    if let Some(agent) = verifier_agent {
        let _ = agent.await;
    }
    // Check-ins that finished while draining.
    if let Err(e) = services_for_flush.fleet().flush_checkins().await {
        tracing::warn!(error = %e, "could not write the last buffered check-ins");
    }
    tracing::info!("flotilla server stopped");
    Ok(())
}

/// Descriptors kept back from the connection cap: the database, the
/// listener, logs, the lock file.
const RESERVED_FDS: u64 = 256;

/// Without a configured cap and a known open-file limit.
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Raise the soft open-file limit to the hard one, and fit the connection
/// cap to what the limit allows, so the server stops accepting before
/// `accept` fails with "too many open files".
fn fit_connections_to_fd_limit(wanted: Option<usize>) -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => limit = getrlimit(Resource::Nofile),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
        }
        let Some(current) = limit.current else {
            return wanted.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        };
        let fits =
            usize::try_from(current.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
        match wanted {
            None => fits,
            Some(w) if w > fits => {
                tracing::warn!(
                    configured = w,
                    open_file_limit = current,
                    max_connections = fits,
                    "http.max_connections lowered to fit the open-file limit"
                );
                fits
            }
            Some(w) => w,
        }
    }
    #[cfg(not(unix))]
    wanted.unwrap_or(DEFAULT_MAX_CONNECTIONS)
}

/// This instance's task manager, with the built-in tasks scheduled.
async fn task_manager(
    config: &Config,
    services: &Services,
) -> anyhow::Result<std::sync::Arc<flotilla_service::tasks::TaskManager>> {
    use flotilla_service::tasks::{builtin, keys, ManagerConfig, SystemClock, TaskManager};
    let tm = &config.task_manager;
    let strategy = std::sync::Arc::new(keys::KeyStrategy {
        grant_secondary: tm.grant_secondary_api_keys,
        use_key: match tm.api_key_type {
            crate::config::ApiKeyType::Primary => flotilla_store::KeyProvider::Primary,
            crate::config::ApiKeyType::Secondary => flotilla_store::KeyProvider::Secondary,
        },
        secondary: tm
            .secondary
            .api_key
            .as_ref()
            .map(|k| keys::SecondaryProvider {
                hosts: tm.secondary.hosts.clone(),
                credential: secrecy::SecretString::from(format!(
                    "ApiKey {}",
                    secondary_key_header(k.expose_secret())
                )),
            }),
    });
    let maintenance = builtin::Maintenance {
        removal_delay: tm.removal_delay,
        invalidate_interval: tm.invalidate_interval,
        retention: config.data.retention(),
        retention_interval: config.data.retention_interval,
        unenroll_inactive_interval: tm
            .unenroll_inactive_agents
            .then_some(tm.unenroll_inactive_interval),
        runs_kept: tm.runs_kept,
        actions_kept: tm.actions_kept,
        status_sample_interval: tm.status_sample_interval,
        status_history_kept: tm.status_history_kept,
        test_types: tm.test_task_types,
        verifier: config
            .verifier
            .enabled
            .then(|| std::sync::Arc::new(config.verifier.service())),
    };
    let manager = TaskManager::new(
        services.clone(),
        builtin::registry(&maintenance, strategy.clone()),
        std::sync::Arc::new(SystemClock),
        ManagerConfig {
            poll_interval: tm.poll_interval,
            capacity: i64::from(tm.capacity) * 2,
            lease: tm.lease,
            ..Default::default()
        },
        strategy,
    );
    if manager.config().capacity < manager.max_cost() {
        anyhow::bail!(
            "invalid configuration: task_manager.capacity {} cannot run the largest task type (it needs {})",
            tm.capacity,
            (manager.max_cost() + 1) / 2
        );
    }
    builtin::ensure_scheduled(&manager, &maintenance)
        .await
        .map_err(|e| anyhow::anyhow!("could not schedule the built-in tasks: {e}"))?;
    Ok(manager)
}

/// A key as `id:secret` or already base64: the header wants base64.
fn secondary_key_header(key: &str) -> String {
    use base64::Engine as _;
    if key.contains(':') {
        base64::engine::general_purpose::STANDARD.encode(key)
    } else {
        key.to_owned()
    }
}

/// Write buffered heartbeats on a timer, and once more at shutdown.
async fn flush_checkins(services: Services, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(services.settings.checkin_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if let Err(e) = services.fleet().flush_checkins().await {
            tracing::warn!(error = %e, "could not write buffered check-ins");
        }
        if stopping {
            return;
        }
    }
}

/// This server as a process on the same machine reaches it.
fn local_url(addr: std::net::SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    format!("http://{host}")
}

/// Where agents ship to on a fresh install: `public_url`, else this
/// listener (loopback when it listens on every address).
fn default_output_host(config: &Config, addr: std::net::SocketAddr) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = if addr.ip().is_unspecified() {
        tracing::warn!(
            "public_url is not set and the server listens on every address: the default output \
             (created on first start) points at loopback, which agents on other hosts cannot reach"
        );
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    format!("http://{host}")
}

/// Install every `<name>-<version>/` folder of the configured packages
/// directory; a bad package stops the start, naming its folder.
async fn install_packages_dir(services: &Services, dir: &std::path::Path) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read packages_dir {}", dir.display()))?;
    let mut folders: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    for folder in folders {
        let (package, outcome) = services
            .management()
            .install_package_dir(&folder)
            .await
            .map_err(|e| anyhow::anyhow!("packages_dir: {}: {e}", folder.display()))?;
        tracing::info!(
            package = %package.name(),
            version = %package.version(),
            new = outcome == flotilla_store::Installed::New,
            "package from packages_dir"
        );
    }
    Ok(())
}

/// With SQLite and no configured key, the sealing key lives beside the
/// database (mode 0600), generated on first start.
fn local_encryption_key(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("encryption.key");
    match std::fs::read_to_string(&path) {
        Ok(key) if key.trim().len() >= 32 => return Ok(key.trim().to_owned()),
        Ok(_) => anyhow::bail!(
            "{} is too short; remove it only if no agent is enrolled",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let key = flotilla_service::secrets::random_alphanumeric(48);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(key.as_bytes())?;
    file.sync_all()?;
    Ok(key)
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::{fmt, prelude::*, EnvFilter};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    let _ = result;
}

/// SIGINT or SIGTERM. The handlers are registered when this is called.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("shutdown requested");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown requested");
        })
    }
}
