//! Server configuration: defaults, then the YAML file, then `FLOTILLA_…`
//! environment variables (nested keys joined with `__`, e.g.
//! `FLOTILLA_HTTP__MAX_BODY_BYTES`), then command-line flags.
//! `flotilla.reference.yml` documents every key; a unit test keeps the two
//! in step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use figment::providers::{Env, Format, Serialized};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_saphyr::figment::Yaml;

/// Top-level keys; environment variables for anything else (such as the
/// CLI's `FLOTILLA_URL`) are not configuration.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "packages_dir",
    "public_url",
    "database_url",
    "database_pool",
    "admin_api_key",
    "encryption_key",
    "log",
    "http",
    "fleet",
    "static_enrollment_tokens",
    "data",
    "task_manager",
    "verifier",
    "console",
];

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory of the embedded SQLite database.
    pub data_dir: PathBuf,
    /// A directory of package folders (`<name>-<version>/`, Elastic's
    /// package format) installed at start.
    pub packages_dir: Option<PathBuf>,
    /// The URL agents reach this server at (`https://fleet.example:8220`):
    /// the default output's host on first start. Default: the listener.
    pub public_url: Option<String>,
    /// `postgres://…`: use PostgreSQL instead of SQLite. (It may hold a
    /// password: secrets are never serialised, and shown only redacted.)
    #[serde(skip_serializing)]
    pub database_url: Option<SecretString>,
    pub database_pool: DatabasePoolConfig,
    /// The first operator API key (at least 32 characters).
    #[serde(skip_serializing)]
    pub admin_api_key: Option<SecretString>,
    /// Seals secrets that must be read back (agents' output keys).
    #[serde(skip_serializing)]
    pub encryption_key: Option<SecretString>,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub fleet: FleetConfig,
    pub static_enrollment_tokens: StaticTokensConfig,
    pub data: DataConfig,
    pub task_manager: TaskManagerConfig,
    pub verifier: VerifierConfig,
    pub console: ConsoleConfig,
}

/// The operator console at `/app`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// A sign-in lasts this long (1 minute to 30 days).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

impl Config {
    /// What the console runs with: the cookie is `Secure` when the
    /// console is reached over TLS, which (the server itself serving
    /// plain HTTP) is when `public_url` is `https://`, a proxy in front.
    pub fn console_settings(&self) -> flotilla_console::ConsoleSettings {
        flotilla_console::ConsoleSettings {
            session_ttl: self.console.session_ttl,
            secure_cookies: self
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://")),
            public_url: self.public_url.clone(),
        }
    }
}

/// The permission verifier: which cloud connectors hold what their
/// integrations need, checked by verifier agents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierConfig {
    /// Run the verifier's tasks at all.
    pub enabled: bool,
    /// Start a verifier agent as a child process of this server (its
    /// state under `<data_dir>/verifier-agent`), restarted if it dies.
    pub embedded_agent: bool,
    /// Agents enrolled with this tag run verifier policies.
    pub agent_tag: String,
    /// The policy idle verifier agents are enrolled into.
    pub home_policy_id: String,
    /// A verifier policy lives this long.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// After a TTL, the next verification waits this much longer.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// A change this recent, or a pending verification older than this,
    /// makes a connector due.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// A failed connector is retried this long after it failed.
    #[serde(with = "humantime_serde")]
    pub failed_cooldown: Duration,
    /// A verified connector is verified again this long after.
    #[serde(with = "humantime_serde")]
    pub reverify_after: Duration,
    /// How often the verify task looks for due connectors (sooner when a
    /// connector changes).
    #[serde(with = "humantime_serde")]
    pub verify_interval: Duration,
    /// How often results are folded into the connectors.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// The output verifier policies write to; unset: the default output.
    /// Results are read from the embedded output.
    pub output_id: Option<String>,
    /// AWS: `auto` (IAM's simulation, else a local evaluation of the
    /// role's policies), `api` or `local`.
    pub simulation: String,
    pub aws: VerifierAwsConfig,
    pub azure: VerifierAzureConfig,
    pub gcp: VerifierGcpConfig,
    /// Tests only: `after_policy_created`.
    pub test_fault: Option<String>,
}

/// Cloud API endpoints; unset: the real ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierAwsConfig {
    pub sts_endpoint: Option<String>,
    pub iam_endpoint: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierAzureConfig {
    pub login_endpoint: Option<String>,
    pub management_endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierGcpConfig {
    pub sts_endpoint: Option<String>,
    pub iamcredentials_endpoint: Option<String>,
    pub resourcemanager_endpoint: Option<String>,
}

impl VerifierConfig {
    /// What the service's tasks take.
    pub fn service(&self) -> flotilla_service::verifier::VerifierConfig {
        use flotilla_domain::connector::VerifierWindows;
        flotilla_service::verifier::VerifierConfig {
            windows: VerifierWindows {
                window: self.window,
                failed_cooldown: self.failed_cooldown,
                reverify_after: self.reverify_after,
            },
            ttl: self.ttl,
            grace: self.grace,
            verify_interval: self.verify_interval,
            status_interval: self.status_interval,
            agent_tag: self.agent_tag.clone(),
            home_policy_id: self.home_policy_id.clone(),
            output_id: self.output_id.clone(),
            endpoints: flotilla_service::verifier::Endpoints {
                aws_sts: self.aws.sts_endpoint.clone(),
                aws_iam: self.aws.iam_endpoint.clone(),
                aws_region: self.aws.region.clone(),
                azure_login: self.azure.login_endpoint.clone(),
                azure_management: self.azure.management_endpoint.clone(),
                gcp_sts: self.gcp.sts_endpoint.clone(),
                gcp_iamcredentials: self.gcp.iamcredentials_endpoint.clone(),
                gcp_resourcemanager: self.gcp.resourcemanager_endpoint.clone(),
            },
            simulation: self.simulation.clone(),
            max_integrations: 10_000,
            test_fault: self.test_fault.clone(),
        }
    }
}

/// Background work: how this instance claims and runs tasks, and the
/// keys of user-scoped tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskManagerConfig {
    /// Run tasks on this instance (the API answers either way).
    pub enabled: bool,
    /// How often due tasks are looked for (sooner when one is scheduled).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Normal-cost tasks run at once (cheap tasks count half, large double).
    pub capacity: u32,
    /// How long a claim holds unless renewed; a dead instance's runs pass
    /// to another after this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Keys of deleted tasks are invalidated this long after.
    #[serde(with = "humantime_serde")]
    pub removal_delay: Duration,
    /// How often queued keys are invalidated.
    #[serde(with = "humantime_serde")]
    pub invalidate_interval: Duration,
    /// Unenrol agents inactive past their policy's inactivity_timeout.
    pub unenroll_inactive_agents: bool,
    #[serde(with = "humantime_serde")]
    pub unenroll_inactive_interval: Duration,
    /// How long the audit trail of runs is kept.
    #[serde(with = "humantime_serde")]
    pub runs_kept: Duration,
    /// How long actions and agents' results are kept (expired ones: a day
    /// past their expiration).
    #[serde(with = "humantime_serde")]
    pub actions_kept: Duration,
    /// How often agents are counted by status for the status history (the
    /// overview's chart); one sample per interval whatever the number of
    /// servers.
    #[serde(with = "humantime_serde")]
    pub status_sample_interval: Duration,
    /// How long status samples are kept.
    #[serde(with = "humantime_serde")]
    pub status_history_kept: Duration,
    /// Also grant each user-scoped task a key from the secondary provider.
    pub grant_secondary_api_keys: bool,
    /// Which key a run uses: `primary` or `secondary` (falling back to the
    /// other when a task has only that one).
    pub api_key_type: ApiKeyType,
    pub secondary: SecondaryProviderConfig,
    /// Register the `test:*` task types (for tests and benchmarks).
    pub test_task_types: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKeyType {
    Primary,
    Secondary,
}

/// An Elasticsearch-compatible security API that grants secondary keys.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondaryProviderConfig {
    pub hosts: Vec<String>,
    /// `id:secret` (or its base64) of a key there that may grant keys.
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
}

impl std::fmt::Debug for SecondaryProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondaryProviderConfig")
            .field("hosts", &self.hosts)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The embedded output's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// How long documents are kept, unless a rule says otherwise.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Per data stream pattern (`*` wildcards), the first match wins.
    pub retention_rules: Vec<RetentionRuleConfig>,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleConfig {
    pub pattern: String,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl DataConfig {
    pub fn retention(&self) -> flotilla_service::retention::Retention {
        flotilla_service::retention::Retention {
            default: self.retention,
            rules: self
                .retention_rules
                .iter()
                .map(|r| flotilla_service::retention::RetentionRule {
                    pattern: r.pattern.clone(),
                    keep: r.retention,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Long-poll duration when the agent sends no `poll_timeout`.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// Up to this much is taken off each long poll.
    #[serde(with = "humantime_serde")]
    pub poll_jitter: Duration,
    /// How often heartbeat check-ins are written (changes are written at once).
    #[serde(with = "humantime_serde")]
    pub checkin_flush_interval: Duration,
    /// How often a waiting check-in re-reads the store without an event.
    #[serde(with = "humantime_serde")]
    pub recheck_interval: Duration,
    /// An agent silent this long shows as offline (silent past its
    /// policy's inactivity_timeout: inactive, and unenrolled by the
    /// task manager).
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// Long polls served at once; more get 429.
    pub max_long_polls: usize,
    /// Other agent requests (enrolments, acks, status, `_bulk`) served at
    /// once, apart from operators' requests; more get 429. Sized so that a
    /// fleet of this many agents acking a change at once is not refused.
    pub max_concurrent_requests: usize,
    /// The fleet this server is sized for: the fleet routes' limits
    /// (`limits`) not set explicitly are derived from it.
    pub expected_agents: u32,
    /// A check-in's slot stays its agent's this long after its poll ended,
    /// so an admitted agent coming back is not refused by newcomers.
    #[serde(with = "humantime_serde")]
    pub long_poll_reserve: Duration,
    /// Per-route rate limits and concurrency caps (null: derived from
    /// `expected_agents`).
    pub limits: FleetRouteLimitsConfig,
    /// The version reported to agents; Elastic agents of a newer minor are refused.
    pub server_version: String,
    /// What output keys may be granted at most.
    pub output_key_ceiling: Vec<CeilingEntry>,
    /// Cluster privileges output keys may be granted at most (agents need
    /// `monitor` to check their output).
    pub output_key_cluster_ceiling: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRouteLimitsConfig {
    pub enroll: RouteLimitConfig,
    pub checkin: RouteLimitConfig,
    pub ack: RouteLimitConfig,
}

/// One route's limits; each unset one is derived from `expected_agents`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimitConfig {
    /// Requests admitted per second (sustained).
    pub rate: Option<f64>,
    /// Requests admitted at once above the rate.
    pub burst: Option<u32>,
    /// Requests in flight at once.
    pub max: Option<u32>,
}

impl RouteLimitConfig {
    fn resolve(
        &self,
        route: &str,
        derived: flotilla_http::fleet::RouteLimit,
    ) -> Result<flotilla_http::fleet::RouteLimit> {
        let rate = self.rate.unwrap_or(derived.rate);
        if !(rate.is_finite() && rate > 0.0) {
            bail!("invalid configuration: fleet.limits.{route}.rate must be a positive number of requests per second");
        }
        let burst = self.burst.unwrap_or(derived.burst);
        if burst == 0 {
            bail!("invalid configuration: fleet.limits.{route}.burst must be at least 1");
        }
        let max = self.max.unwrap_or(derived.max);
        if max == 0 {
            bail!("invalid configuration: fleet.limits.{route}.max must be at least 1");
        }
        Ok(flotilla_http::fleet::RouteLimit { rate, burst, max })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeilingEntry {
    pub names: Vec<String>,
    pub privileges: Vec<String>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTokensConfig {
    pub enabled: bool,
    /// CIDRs every static token may be used from (empty: anywhere).
    pub allowed_ips: Vec<ipnet::IpNet>,
    pub tokens: Vec<StaticTokenConfig>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTokenConfig {
    #[serde(skip_serializing)]
    pub token: SecretString,
    pub policy_id: String,
    #[serde(default)]
    pub allowed_ips: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for StaticTokensConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTokensConfig")
            .field("enabled", &self.enabled)
            .field("allowed_ips", &self.allowed_ips)
            .field(
                "tokens",
                &format!("{} tokens (redacted)", self.tokens.len()),
            )
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self
                    .database_url
                    .as_ref()
                    .map(|u| flotilla_store_sql::redact_url(u.expose_secret())),
            )
            .field("admin_api_key", &self.admin_api_key.as_ref().map(|_| "***"))
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "***"),
            )
            .field("log", &self.log)
            .field("http", &self.http)
            .field("fleet", &self.fleet)
            .field("static_enrollment_tokens", &self.static_enrollment_tokens)
            .field("data", &self.data)
            .field("task_manager", &self.task_manager)
            .finish()
    }
}

/// The store's connection pool; unset values take the engine's default
/// (SQLite: 8 readers, 10 s; PostgreSQL: 16 connections, 3 s).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabasePoolConfig {
    /// Connections kept at most by this instance (on PostgreSQL, each
    /// instance's pool counts against the server's `max_connections`).
    pub max_connections: Option<u32>,
    /// How long a request waits for a free connection before it is
    /// answered 503 with `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Option<Duration>,
}

impl DatabasePoolConfig {
    /// The pool for the chosen engine: the engine's default with what is set here.
    pub fn settings(&self, postgres: bool) -> flotilla_store_sql::PoolSettings {
        let mut p = if postgres {
            flotilla_store_sql::PoolSettings::POSTGRES
        } else {
            flotilla_store_sql::PoolSettings::SQLITE
        };
        if let Some(n) = self.max_connections {
            p.max_connections = n;
        }
        if let Some(t) = self.acquire_timeout {
            p.acquire_timeout = t;
        }
        p
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `flotilla=debug,info`); RUST_LOG wins.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest `_bulk` body accepted (the embedded output's ingest), in bytes.
    pub max_bulk_bytes: usize,
    /// Longest a (non-long-poll) request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests served at once; more are refused with 503.
    pub max_concurrent_requests: usize,
    /// On shutdown, how long open requests may finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
    /// From accepting a connection (or answering on it) to the end of the
    /// next request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections open at once (long polls included); unset: as many as
    /// the process's open-file limit allows. Lowered to fit that limit.
    pub max_connections: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8220".parse().expect("valid default address"),
            data_dir: PathBuf::from("./flotilla-data"),
            packages_dir: None,
            public_url: None,
            database_url: None,
            database_pool: DatabasePoolConfig::default(),
            admin_api_key: None,
            encryption_key: None,
            fleet: FleetConfig {
                poll_timeout: Duration::from_secs(300),
                poll_jitter: Duration::from_secs(30),
                checkin_flush_interval: Duration::from_secs(10),
                recheck_interval: Duration::from_secs(120),
                offline_after: Duration::from_secs(300),
                max_long_polls: 20_000,
                max_concurrent_requests: 20_000,
                expected_agents: 20_000,
                long_poll_reserve: Duration::from_secs(15),
                limits: FleetRouteLimitsConfig::default(),
                server_version: "9.6.0".into(),
                output_key_ceiling: vec![CeilingEntry {
                    names: ["logs-*", "metrics-*", "traces-*", "synthetics-*"]
                        .map(String::from)
                        .to_vec(),
                    privileges: ["auto_configure", "create_doc"].map(String::from).to_vec(),
                }],
                output_key_cluster_ceiling: vec!["monitor".into()],
            },
            static_enrollment_tokens: StaticTokensConfig::default(),
            data: DataConfig {
                retention: Duration::from_secs(7 * 24 * 3600),
                retention_rules: vec![],
                retention_interval: Duration::from_secs(600),
            },
            task_manager: TaskManagerConfig {
                enabled: true,
                poll_interval: Duration::from_millis(500),
                capacity: 10,
                lease: Duration::from_secs(30),
                removal_delay: Duration::from_secs(3600),
                invalidate_interval: Duration::from_secs(300),
                unenroll_inactive_agents: true,
                unenroll_inactive_interval: Duration::from_secs(600),
                runs_kept: Duration::from_secs(7 * 24 * 3600),
                actions_kept: Duration::from_secs(30 * 24 * 3600),
                status_sample_interval: Duration::from_secs(60),
                status_history_kept: Duration::from_secs(14 * 24 * 3600),
                grant_secondary_api_keys: false,
                api_key_type: ApiKeyType::Primary,
                secondary: SecondaryProviderConfig::default(),
                test_task_types: false,
            },
            console: ConsoleConfig::default(),
            verifier: VerifierConfig {
                enabled: true,
                embedded_agent: true,
                agent_tag: "flotilla-verifier".into(),
                home_policy_id: "flotilla-verifier".into(),
                ttl: Duration::from_secs(300),
                grace: Duration::from_secs(30),
                window: Duration::from_secs(300),
                failed_cooldown: Duration::from_secs(3600),
                reverify_after: Duration::from_secs(24 * 3600),
                verify_interval: Duration::from_secs(3600),
                status_interval: Duration::from_secs(60),
                output_id: None,
                simulation: "auto".into(),
                aws: VerifierAwsConfig::default(),
                azure: VerifierAzureConfig::default(),
                gcp: VerifierGcpConfig::default(),
                test_fault: None,
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Pretty,
            },
            http: HttpConfig {
                max_body_bytes: 1024 * 1024,
                max_bulk_bytes: 100 << 20,
                request_timeout: Duration::from_secs(60),
                max_concurrent_requests: 1024,
                shutdown_drain: Duration::from_secs(10),
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(30),
                max_connections: None,
            },
        }
    }
}

/// Values given as command-line flags: they override everything else.
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

impl Config {
    pub fn load(file: Option<&std::path::Path>, flags: &FlagOverrides) -> Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Yaml::file_exact(file));
        }
        let env = Env::prefixed("FLOTILLA_")
            .filter(|key| {
                let top = key.as_str().split("__").next().unwrap_or("");
                KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
            })
            .split("__");
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                bail!("invalid configuration: public_url must be an http:// or https:// URL");
            }
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86_400))
            .contains(&self.console.session_ttl)
        {
            bail!("invalid configuration: console.session_ttl must be between 1m and 30days");
        }
        if self.data.retention_interval < Duration::from_secs(1) {
            bail!("invalid configuration: data.retention_interval must be at least 1s");
        }
        if self.fleet.offline_after < Duration::from_secs(10) {
            bail!("invalid configuration: fleet.offline_after must be at least 10s");
        }
        let v = &self.verifier;
        if v.ttl < Duration::from_secs(1)
            || v.status_interval < Duration::from_secs(1)
            || v.verify_interval < Duration::from_secs(1)
        {
            bail!("invalid configuration: verifier.ttl, verifier.status_interval and verifier.verify_interval must be at least 1s");
        }
        let year = Duration::from_secs(366 * 86_400);
        for (name, d) in [
            ("ttl", v.ttl),
            ("grace", v.grace),
            ("window", v.window),
            ("failed_cooldown", v.failed_cooldown),
            ("reverify_after", v.reverify_after),
            ("verify_interval", v.verify_interval),
            ("status_interval", v.status_interval),
        ] {
            if d > year {
                bail!("invalid configuration: verifier.{name} must be at most 366 days");
            }
        }
        if let Some(r) = &v.aws.region {
            if flotilla_domain::connector::validate_region(r).is_err() {
                bail!("invalid configuration: verifier.aws.region is not an AWS region name");
            }
        }
        if !["auto", "api", "local"].contains(&v.simulation.as_str()) {
            bail!("invalid configuration: verifier.simulation must be auto, api or local");
        }
        if v.test_fault
            .as_deref()
            .is_some_and(|f| f != "after_policy_created")
        {
            bail!("invalid configuration: verifier.test_fault may only be after_policy_created");
        }
        if v.agent_tag.trim().is_empty() {
            bail!("invalid configuration: verifier.agent_tag must not be empty");
        }
        let tm = &self.task_manager;
        if tm.poll_interval < Duration::from_millis(10) {
            bail!("invalid configuration: task_manager.poll_interval must be at least 10ms");
        }
        if !(1..=1000).contains(&tm.capacity) {
            bail!("invalid configuration: task_manager.capacity must be between 1 and 1000");
        }
        if tm.lease < Duration::from_secs(3) {
            bail!("invalid configuration: task_manager.lease must be at least 3s");
        }
        for (name, d) in [
            ("invalidate_interval", tm.invalidate_interval),
            ("unenroll_inactive_interval", tm.unenroll_inactive_interval),
        ] {
            if d < Duration::from_secs(1) {
                bail!("invalid configuration: task_manager.{name} must be at least 1s");
            }
        }
        if (tm.grant_secondary_api_keys || tm.api_key_type == ApiKeyType::Secondary)
            && (tm.secondary.hosts.is_empty() || tm.secondary.api_key.is_none())
        {
            bail!("invalid configuration: task_manager.secondary needs hosts and api_key when secondary keys are granted or used");
        }
        if self
            .data
            .retention_rules
            .iter()
            .any(|r| r.pattern.is_empty())
        {
            bail!("invalid configuration: data.retention_rules: a pattern must not be empty");
        }
        if let Some(key) = &self.admin_api_key {
            if key.expose_secret().chars().count() < 32 {
                bail!("invalid configuration: admin_api_key (FLOTILLA_ADMIN_API_KEY) must be at least 32 characters");
            }
        }
        if let Some(url) = &self.database_url {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("invalid configuration: database_url must be a postgres:// URL");
            }
            if self.encryption_key.is_none() {
                bail!(
                    "invalid configuration: encryption_key (FLOTILLA_ENCRYPTION_KEY) is required with database_url, \
                     and every server instance must share it"
                );
            }
        }
        if let Some(key) = &self.encryption_key {
            if key.expose_secret().chars().count() < 32 {
                bail!("invalid configuration: encryption_key must be at least 32 characters");
            }
        }
        if self.fleet.max_long_polls == 0 {
            bail!("invalid configuration: fleet.max_long_polls must be at least 1");
        }
        if self.fleet.poll_timeout.is_zero() {
            bail!("invalid configuration: fleet.poll_timeout must be positive");
        }
        self.fleet_settings()?;
        self.fleet_route_limits()?;
        if self.http.max_body_bytes < 1024 {
            bail!("invalid configuration: http.max_body_bytes must be at least 1024");
        }
        if self.http.max_concurrent_requests == 0 {
            bail!("invalid configuration: http.max_concurrent_requests must be at least 1");
        }
        if self.http.request_timeout.is_zero() {
            bail!("invalid configuration: http.request_timeout must be positive");
        }
        if self.fleet.recheck_interval.is_zero() {
            bail!("invalid configuration: fleet.recheck_interval must be positive");
        }
        if self.http.header_read_timeout.is_zero() {
            bail!("invalid configuration: http.header_read_timeout must be positive");
        }
        if self.http.idle_timeout.is_zero() {
            bail!("invalid configuration: http.idle_timeout must be positive");
        }
        if let Some(n) = self.database_pool.max_connections {
            if !(1..=10_000).contains(&n) {
                bail!("invalid configuration: database_pool.max_connections must be between 1 and 10000");
            }
        }
        if self
            .database_pool
            .acquire_timeout
            .is_some_and(|t| t.is_zero())
        {
            bail!("invalid configuration: database_pool.acquire_timeout must be positive");
        }
        if self.http.max_connections == Some(0) {
            bail!("invalid configuration: http.max_connections must be at least 1");
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            bail!(
                "invalid configuration: log.level '{}' is not a valid filter",
                self.log.level
            );
        }
        Ok(())
    }
}

impl Config {
    /// The fleet routes' limits: those set, the others derived from
    /// `fleet.expected_agents`.
    pub fn fleet_route_limits(&self) -> Result<flotilla_http::fleet::FleetRouteLimits> {
        if self.fleet.expected_agents == 0 {
            bail!("invalid configuration: fleet.expected_agents must be at least 1");
        }
        if self.fleet.long_poll_reserve.is_zero() {
            bail!("invalid configuration: fleet.long_poll_reserve must be positive");
        }
        let d = flotilla_http::fleet::FleetRouteLimits::for_agents(self.fleet.expected_agents);
        let l = &self.fleet.limits;
        Ok(flotilla_http::fleet::FleetRouteLimits {
            enroll: l.enroll.resolve("enroll", d.enroll)?,
            checkin: l.checkin.resolve("checkin", d.checkin)?,
            ack: l.ack.resolve("ack", d.ack)?,
            reserve: self.fleet.long_poll_reserve,
        })
    }

    /// The fleet protocol's settings; static tokens are checked here (a
    /// short one stops the server, named by position, never printed).
    pub fn fleet_settings(&self) -> Result<flotilla_service::FleetSettings> {
        use flotilla_domain::permissions::{Ceiling, IndexPermission};
        let tokens = self
            .static_enrollment_tokens
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    format!(
                        "static_enrollment_tokens.tokens[{i}] (policy '{}')",
                        t.policy_id
                    ),
                    t.token.expose_secret().to_owned(),
                    t.policy_id.clone(),
                    t.allowed_ips.clone(),
                )
            })
            .collect();
        let static_tokens = flotilla_service::settings::StaticTokens::new(
            self.static_enrollment_tokens.enabled,
            self.static_enrollment_tokens.allowed_ips.clone(),
            tokens,
        )
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(flotilla_service::FleetSettings {
            static_tokens,
            ceiling: Ceiling {
                indices: self
                    .fleet
                    .output_key_ceiling
                    .iter()
                    .map(|c| IndexPermission {
                        names: c.names.clone(),
                        privileges: c.privileges.clone(),
                    })
                    .collect(),
                cluster: self.fleet.output_key_cluster_ceiling.clone(),
            },
            poll_timeout: self.fleet.poll_timeout,
            poll_jitter: self.fleet.poll_jitter,
            checkin_flush_interval: self.fleet.checkin_flush_interval,
            recheck_interval: self.fleet.recheck_interval,
            max_long_polls: self.fleet.max_long_polls,
            server_version: self.fleet.server_version.clone(),
        })
    }
}

/// figment's errors name the key; make each one a line.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let mut msg = e.kind.to_string();
            if !key.is_empty() {
                msg = format!("{key}: {msg}");
            }
            if let Some(source) = &e.metadata {
                msg.push_str(&format!(" (from {})", source.name));
            }
            msg
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
// figment::Jail's closures return its (large) error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_apply_without_a_file() {
        Jail::expect_with(|_| {
            let c = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(c.listen.to_string(), "127.0.0.1:8220");
            assert_eq!(c.data_dir, PathBuf::from("./flotilla-data"));
            assert!(c.database_url.is_none());
            Ok(())
        });
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "f.yml",
                "listen: 127.0.0.1:9000\nhttp:\n  max_body_bytes: 4096\n",
            )?;
            jail.set_env("FLOTILLA_HTTP__MAX_BODY_BYTES", "8192");
            jail.set_env("FLOTILLA_URL", "http://ignored");
            jail.set_env("FLOTILLA_DATABASE_URL", "postgres://u@h/db");
            jail.set_env(
                "FLOTILLA_ENCRYPTION_KEY",
                "an-encryption-key-of-at-least-32-chars",
            );
            let c = Config::load(Some("f.yml".as_ref()), &FlagOverrides::default()).unwrap();
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.http.max_body_bytes, 8192);
            assert_eq!(
                c.database_url.as_ref().map(|u| u.expose_secret()),
                Some("postgres://u@h/db")
            );
            let flags = FlagOverrides {
                listen: Some("127.0.0.1:1".parse().unwrap()),
                ..Default::default()
            };
            let c = Config::load(Some("f.yml".as_ref()), &flags).unwrap();
            assert_eq!(c.listen.port(), 1);
            Ok(())
        });
    }

    #[test]
    fn fleet_limits_derive_from_expected_agents_and_are_set_one_by_one() {
        Jail::expect_with(|jail| {
            jail.set_env("FLOTILLA_FLEET__EXPECTED_AGENTS", "1000");
            jail.set_env("FLOTILLA_FLEET__LIMITS__CHECKIN__MAX", "5000");
            jail.set_env("FLOTILLA_FLEET__LIMITS__ENROLL__RATE", "2.5");
            let c = Config::load(None, &FlagOverrides::default()).unwrap();
            let l = c.fleet_route_limits().unwrap();
            let d = flotilla_http::fleet::FleetRouteLimits::for_agents(1000);
            assert_eq!(l.checkin.max, 5000);
            assert_eq!(l.checkin.rate, d.checkin.rate);
            assert_eq!(l.enroll.rate, 2.5);
            assert_eq!(l.ack, d.ack);

            for (key, value) in [
                ("FLOTILLA_FLEET__LIMITS__ACK__BURST", "0"),
                ("FLOTILLA_FLEET__LIMITS__ENROLL__RATE", "0"),
                ("FLOTILLA_FLEET__EXPECTED_AGENTS", "0"),
            ] {
                jail.set_env(key, value);
                let err = Config::load(None, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                let name = key
                    .trim_start_matches("FLOTILLA_")
                    .to_ascii_lowercase()
                    .replace("__", ".");
                assert!(err.contains(&name) && !err.contains('\n'), "{err}");
                jail.clear_env();
            }
            Ok(())
        });
    }

    #[test]
    fn the_database_pool_takes_the_engine_default_unless_set() {
        Jail::expect_with(|jail| {
            let c = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(
                c.database_pool.settings(true),
                flotilla_store_sql::PoolSettings::POSTGRES
            );
            assert_eq!(
                c.database_pool.settings(false),
                flotilla_store_sql::PoolSettings::SQLITE
            );

            jail.set_env("FLOTILLA_DATABASE_POOL__MAX_CONNECTIONS", "48");
            jail.set_env("FLOTILLA_DATABASE_POOL__ACQUIRE_TIMEOUT", "750ms");
            let c = Config::load(None, &FlagOverrides::default()).unwrap();
            let p = c.database_pool.settings(true);
            assert_eq!(p.max_connections, 48);
            assert_eq!(p.acquire_timeout, Duration::from_millis(750));

            for (key, value) in [
                ("FLOTILLA_DATABASE_POOL__MAX_CONNECTIONS", "0"),
                ("FLOTILLA_DATABASE_POOL__ACQUIRE_TIMEOUT", "0s"),
            ] {
                jail.clear_env();
                jail.set_env(key, value);
                let err = Config::load(None, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("database_pool."), "{err}");
            }
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file("f.yml", "http:\n  max_body_bytes: lots\n")?;
            let err = Config::load(Some("f.yml".as_ref()), &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("http.max_body_bytes"), "{err}");

            jail.create_file("g.yml", "listne: 1\n")?;
            let err = Config::load(Some("g.yml".as_ref()), &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("listne"), "{err}");

            jail.set_env("FLOTILLA_ADMIN_API_KEY", "short");
            let err = Config::load(None, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("admin_api_key") && !err.contains("short"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn reference_file_documents_every_key_with_its_default() {
        let text = include_str!("../../../flotilla.reference.yml");
        // Uncommenting the reference gives exactly the defaults.
        let uncommented: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("##"))
            .map(|l| {
                let trimmed = l.trim_start();
                let indent = &l[..l.len() - trimmed.len()];
                match trimmed.strip_prefix("# ") {
                    Some(rest) => format!("{indent}{rest}"),
                    None => l.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: Config = Figment::from(Yaml::string(&uncommented)).extract().unwrap();
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(&defaults).unwrap()
        );
    }
}
