//! `flotilla server`: open the store, bootstrap, serve.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use secrecy::SecretString;

use flotilla_http::{AppState, HttpLimits};
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
        Some(url) => Location::Postgres(url),
        None => Location::DataDir(&config.data_dir),
    };
    tracing::info!(storage = ?location, "opening storage");
    let store = flotilla_store_sql::open(location).await?;
    let services = Services::new(store);

    let admin_key = config.admin_api_key.clone().map(SecretString::from);
    if let Some(generated) = services.management().bootstrap(admin_key.as_ref()).await? {
        use secrecy::ExposeSecret;
        // Deliberately not through tracing: shown once, never logged.
        println!(
            "admin API key (shown once, store it now): {}",
            generated.expose_secret()
        );
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let limits = HttpLimits {
        max_body_bytes: config.http.max_body_bytes,
        request_timeout: config.http.request_timeout,
        max_concurrent_requests: config.http.max_concurrent_requests,
    };
    let app = flotilla_http::app(AppState { services }, &limits);
    tracing::info!(%addr, "flotilla server started");
    // The ready line tests and scripts wait for.
    println!("listening on {addr}");
    flotilla_http::serve(listener, app, shutdown_signal(), config.http.shutdown_drain).await?;
    tracing::info!("flotilla server stopped");
    Ok(())
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
