//! Control's configuration: a TOML file, then `CLOUDPHONE_*` environment variables, then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything control needs to start. Defaults make a single-host embedded setup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Address of the REST API, console, `/healthz` and `/metrics`.
    pub listen: SocketAddr,
    /// How tenants reach the API; used in links the console prints.
    pub public_url: String,
    /// The deployment's home region, named in the usage APIs' answers. Instances are sold in
    /// the regions the nodes announce (BatchShowSku lists them), which may differ from it.
    pub region: String,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub nodes: NodesConfig,
    pub iam: IamConfig,
    pub backup: BackupConfig,
    pub usage: UsageConfig,
    pub quotas: QuotaConfig,
    pub live_api: LiveApiConfig,
    /// Several control processes on one PostgreSQL (`docs/reliability.md`).
    pub replicas: ReplicasConfig,
}

/// How control replicas on one PostgreSQL coordinate; SQLite has one process and ignores it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicasConfig {
    /// How often a replica that is not the leader tries to take the leader's advisory lock
    /// (`leader`): a dead leader's jobs move within this of PostgreSQL releasing its lock.
    pub leader_retry_ms: u64,
    /// How often every replica re-reads the node list from the database and dials nodes it
    /// does not know yet (a node that joined through another replica).
    pub registry_refresh_ms: u64,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        Self {
            leader_retry_ms: 2_000,
            registry_refresh_ms: 2_000,
        }
    }
}

/// TLS for `listen` (the tenant API, console, `/healthz`, `/metrics`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// PEM certificate chain and private key: when both are set, `listen` serves HTTPS only
    /// (tenants' passwords, tokens and AK signatures cross it). Unset: plain HTTP, for the
    /// demo or behind a TLS-terminating proxy.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path?mode=rwc` (embedded, default) or `postgres://…` (several replicas).
    pub url: String,
}

/// The URL with any password in it replaced, so a PostgreSQL URL with credentials can be
/// printed.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &redact_url_password(&self.url))
            .finish()
    }
}

/// `scheme://user:password@host…` → `scheme://user:<redacted>@host…`; other URLs as they are.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodesConfig {
    /// Address of the node-facing gRPC service (`ControlPlane`: announcements, the node list),
    /// apart from the tenant API so the fleet's endpoints can stay off the public internet.
    pub listen: SocketAddr,
    /// A node silent this long is marked down (and its instances show it).
    pub heartbeat_timeout_ms: u64,
    /// Where control's node CA (`ca.pem`, `ca.key`) lives; created on first start. Empty:
    /// `pki/` next to an SQLite store (or in the working dir). Replicas sharing PostgreSQL must
    /// share this directory too.
    pub ca_dir: String,
    /// Removed: nodes enroll with single-use join tokens now (`node join-token`). Still read
    /// only so that a config that sets it fails with a clear error instead of "unknown field";
    /// its value is never kept.
    pub enrollment_token: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IamConfig {
    /// Lifetime of issued tokens; Huawei IAM's is 24 h.
    pub token_ttl_secs: u64,
    /// Password checks (argon2, ~19 MiB and tens of ms each) running at once; 0 means one per
    /// CPU. Logins past it wait their turn, so a flood cannot take all memory and CPU.
    pub argon2_concurrency: usize,
    /// How long a login waits for a free password check before it is refused with 429.
    pub login_queue_timeout_ms: u64,
    /// Wrong passwords per user (and per client address) before backoff starts.
    pub login_free_failures: u32,
    /// The first lockout after the free failures; each later failure doubles it.
    pub login_backoff_base_ms: u64,
    /// The longest lockout.
    pub login_backoff_max_ms: u64,
    /// A user or address with no wrong password for this long starts again from zero.
    pub login_forget_ms: u64,
}

impl IamConfig {
    /// The backoff rules these settings make.
    pub(crate) fn backoff_rules(&self) -> cloudphone_core::login_backoff::BackoffRules {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        cloudphone_core::login_backoff::BackoffRules {
            free_failures: self.login_free_failures,
            base_ms: ms(self.login_backoff_base_ms),
            max_ms: ms(self.login_backoff_max_ms),
            forget_ms: ms(self.login_forget_ms),
            ..cloudphone_core::login_backoff::BackoffRules::DEFAULT
        }
    }
}

/// Per-tenant limits, so one tenant cannot take a fleet's capacity from the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Instances a tenant may hold (every state but deleted).
    pub instances_per_tenant: u32,
    /// SyncCommand runs (one per instance named) a tenant may have in flight at once on this
    /// control replica.
    pub concurrent_commands_per_tenant: u32,
    /// Instances a tenant may hold on any one node, so one tenant cannot take every encoder
    /// of a host; an order that cannot be placed within it is refused whole (40010). 0: no
    /// such limit.
    pub instances_per_node_per_tenant: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            instances_per_tenant: 500,
            concurrent_commands_per_tenant: 200,
            instances_per_node_per_tenant: 0,
        }
    }
}

/// The live edge's API (seed 003, docs/live-api.md) on its own listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveApiConfig {
    /// Where the API is served (`GET /` and `POST /`); unset: not served.
    pub listen: Option<SocketAddr>,
    /// The `HostId` every error body names.
    pub host_id: String,
    /// The operator's key pair, the only one that may call the service Actions
    /// (CreateMtsService…); the id empty: no operator key, no service Actions.
    pub operator_access_key_id: String,
    pub operator_access_key_secret: cloudphone_daemon::Secret,
    /// Each key's budget: requests per `rate_window_ms` (sliding), counted once signed;
    /// past it `Throttling` (429). 0: no limit.
    pub rate_limit: usize,
    pub rate_window_ms: u64,
}

impl Default for LiveApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            host_id: "vs.cloudphone".into(),
            operator_access_key_id: String::new(),
            operator_access_key_secret: cloudphone_daemon::Secret::default(),
            rate_limit: 1_200,
            rate_window_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Where BatchBackupInstances archives go, as `file:///abs/dir` (or a relative `file://dir`,
    /// taken from control's working dir). Empty means `backups/` next to an SQLite store (or in
    /// the working dir). Nodes write the archives themselves, so with several hosts this must be
    /// storage they all mount at the same path. S3-compatible storage is not supported yet.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Volcengine DescribeLiveTranscodeData's budget: requests per user per window
    /// (the document's 100 per minute).
    pub volcengine_rate_limit: usize,
    /// The budget's sliding window, in milliseconds (60 000; tests shorten it).
    pub volcengine_rate_window_ms: u64,
    /// The systemd credential (`LoadCredential=<name>:…`) holding the key that seals AK
    /// secrets: read from `$CREDENTIALS_DIRECTORY/<name>` whenever systemd set that variable,
    /// so the key never sits in the state directory or the database's backups.
    pub secrets_key_credential: String,
    /// Outside systemd: the key's file (64 hex digits; created, mode 0600, when missing).
    /// Unset: `usage-secrets.key` next to an SQLite store, the demo's default.
    pub secrets_key_file: Option<PathBuf>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            volcengine_rate_limit: 100,
            volcengine_rate_window_ms: 60_000,
            secrets_key_credential: "usage-secrets-key".into(),
            secrets_key_file: None,
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: "http://127.0.0.1:8080".into(),
            region: "cn-north-7".into(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            nodes: NodesConfig::default(),
            iam: IamConfig::default(),
            backup: BackupConfig::default(),
            usage: UsageConfig::default(),
            quotas: QuotaConfig::default(),
            live_api: LiveApiConfig::default(),
            replicas: ReplicasConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://control.db?mode=rwc".into(),
        }
    }
}

impl Default for NodesConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50050)),
            heartbeat_timeout_ms: 5_000,
            ca_dir: String::new(),
            enrollment_token: None,
        }
    }
}

impl Default for IamConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: 24 * 3600,
            argon2_concurrency: 0,
            login_queue_timeout_ms: 10_000,
            login_free_failures: 5,
            login_backoff_base_ms: 1_000,
            login_backoff_max_ms: 15 * 60_000,
            login_forget_ms: 60 * 60_000,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] cloudphone_daemon::FileError),
    #[error("{name}={value:?} is not valid: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The socket address in the variable `name`, if it is set.
fn env_addr(
    env: impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(value) = env(name) else {
        return Ok(None);
    };
    match value.parse::<SocketAddr>() {
        Ok(addr) => Ok(Some(addr)),
        Err(e) => Err(ConfigError::Env {
            name,
            value,
            reason: e.to_string(),
        }),
    }
}

impl ControlConfig {
    /// Loads `path` (if given), then applies environment overrides, then validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config: Self = cloudphone_daemon::read_toml(path)?;
        if let Some(addr) = env_addr(&env, "CLOUDPHONE_LISTEN")? {
            config.listen = addr;
        }
        if let Some(addr) = env_addr(&env, "CLOUDPHONE_NODES_LISTEN")? {
            config.nodes.listen = addr;
        }
        if let Some(value) = env("CLOUDPHONE_STORE_URL") {
            config.store.url = value;
        }
        if env("CLOUDPHONE_ENROLLMENT_TOKEN").is_some() {
            config.nodes.enrollment_token = Some(serde::de::IgnoredAny);
        }
        if let Some(value) = env("CLOUDPHONE_CA_DIR") {
            config.nodes.ca_dir = value;
        }
        if let Some(value) = env("CLOUDPHONE_PUBLIC_URL") {
            config.public_url = value;
        }
        if let Some(value) = env("CLOUDPHONE_BACKUP_URL") {
            config.backup.url = value;
        }
        if let Some(addr) = env_addr(&env, "CLOUDPHONE_LIVE_API_LISTEN")? {
            config.live_api.listen = Some(addr);
        }
        // The operator's secret from the environment (a systemd credential or a container
        // secret), so it need not sit in the config file.
        if let Some(value) = env("CLOUDPHONE_LIVE_API_OPERATOR_SECRET") {
            config.live_api.operator_access_key_secret = value.into();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.enrollment_token.is_some() {
            return Err(ConfigError::Invalid(
                "[nodes].enrollment_token (or CLOUDPHONE_ENROLLMENT_TOKEN) was removed: nodes \
                 enroll with single-use join tokens from `cloudphone-control node join-token` \
                 (docs/deploy.md); delete the setting"
                    .into(),
            ));
        }
        if self.nodes.heartbeat_timeout_ms < 100 {
            return Err(ConfigError::Invalid(
                "nodes.heartbeat_timeout_ms must be at least 100".into(),
            ));
        }
        if self.iam.token_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "iam.token_ttl_secs must be positive".into(),
            ));
        }
        if self.usage.volcengine_rate_limit == 0 || self.usage.volcengine_rate_window_ms == 0 {
            return Err(ConfigError::Invalid(
                "usage.volcengine_rate_limit and volcengine_rate_window_ms must be positive".into(),
            ));
        }
        if self.replicas.leader_retry_ms < 100 || self.replicas.registry_refresh_ms < 100 {
            return Err(ConfigError::Invalid(
                "replicas.leader_retry_ms and registry_refresh_ms must be at least 100".into(),
            ));
        }
        if self.live_api.rate_window_ms == 0 {
            return Err(ConfigError::Invalid(
                "live_api.rate_window_ms must be positive".into(),
            ));
        }
        if !self.live_api.operator_access_key_id.is_empty()
            && self.live_api.operator_access_key_secret.is_empty()
        {
            return Err(ConfigError::Invalid(
                "live_api.operator_access_key_id needs operator_access_key_secret (or \
                 CLOUDPHONE_LIVE_API_OPERATOR_SECRET)"
                    .into(),
            ));
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "http.tls_cert and http.tls_key go together".into(),
            ));
        }
        if self.usage.secrets_key_credential.is_empty()
            || self.usage.secrets_key_credential.contains('/')
        {
            return Err(ConfigError::Invalid(
                "usage.secrets_key_credential must be a credential name (no '/')".into(),
            ));
        }
        if !self.backup.url.is_empty() && !self.backup.url.starts_with("file://") {
            return Err(ConfigError::Invalid(format!(
                "backup.url {:?}: only file:// is supported (S3 is not yet)",
                self.backup.url
            )));
        }
        Ok(())
    }

    /// The directory backup archives go to, made absolute against `cwd` (nodes get it as a
    /// `file://` URI, so it must not depend on their working dir).
    pub fn backup_dir(&self, cwd: &Path) -> std::path::PathBuf {
        let dir = match self.backup.url.strip_prefix("file://") {
            Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
            _ => sqlite_dir(&self.store.url)
                .unwrap_or_default()
                .join("backups"),
        };
        cwd.join(dir)
    }
}

/// The directory of an SQLite store's file (`sqlite:///a/b.db?mode=rwc` → `/a`), if the store
/// is an SQLite file.
pub(crate) fn sqlite_dir(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Path::new(path).parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env() {
        let env =
            |name: &str| (name == "CLOUDPHONE_STORE_URL").then(|| "postgres://x/y".to_string());
        let text = "listen = \"127.0.0.1:9000\"\n[nodes]\nheartbeat_timeout_ms = 2000\n";
        let config = load_text_with(text, env).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.nodes.heartbeat_timeout_ms, 2000);
        assert_eq!(config.store.url, "postgres://x/y");
        assert_eq!(config.iam.token_ttl_secs, 86_400);
        assert_eq!(
            config.nodes.listen,
            SocketAddr::from(([127, 0, 0, 1], 50050))
        );
    }

    #[test]
    fn the_live_api_is_off_by_default_and_its_operator_secret_can_come_from_the_environment() {
        let config = ControlConfig::default();
        assert_eq!(config.live_api.listen, None);
        let text = "[live_api]\nlisten = \"127.0.0.1:9500\"\noperator_access_key_id = \"OP\"\n";
        // An operator key without its secret is refused at start.
        assert!(matches!(load_text(text), Err(ConfigError::Invalid(_))));
        let env = |name: &str| {
            (name == "CLOUDPHONE_LIVE_API_OPERATOR_SECRET").then(|| "s3cr3t".to_string())
        };
        let config = load_text_with(text, env).unwrap();
        assert_eq!(
            config.live_api.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9500)))
        );
        assert_eq!(
            config.live_api.operator_access_key_secret.expose(),
            "s3cr3t"
        );
        assert_eq!(
            format!("{:?}", config.live_api).matches("s3cr3t").count(),
            0
        );
    }

    #[test]
    fn backup_dir_defaults_next_to_the_store() {
        let cwd = Path::new("/srv/control");
        let mut config = ControlConfig::default();
        assert_eq!(
            config.backup_dir(cwd),
            Path::new("/srv/control/backups"),
            "relative store, relative default"
        );
        config.store.url = "sqlite:///var/lib/cloudphone/control.db?mode=rwc".into();
        assert_eq!(
            config.backup_dir(cwd),
            Path::new("/var/lib/cloudphone/backups")
        );
        config.store.url = "postgres://db/cloudphone".into();
        assert_eq!(config.backup_dir(cwd), Path::new("/srv/control/backups"));
        config.backup.url = "file:///mnt/shared/backups".into();
        assert_eq!(config.backup_dir(cwd), Path::new("/mnt/shared/backups"));
        let env = |name: &str| (name == "CLOUDPHONE_BACKUP_URL").then(|| "s3://b/k".to_string());
        assert!(matches!(
            ControlConfig::load(None, env),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn the_volcengine_budget_defaults_to_100_a_minute_and_must_be_positive() {
        let config = ControlConfig::default();
        assert_eq!(
            (
                config.usage.volcengine_rate_limit,
                config.usage.volcengine_rate_window_ms
            ),
            (100, 60_000)
        );
        let config = load_text("[usage]\nvolcengine_rate_window_ms = 5000\n").unwrap();
        assert_eq!(config.usage.volcengine_rate_window_ms, 5000);
        assert_eq!(config.usage.volcengine_rate_limit, 100);
        assert!(matches!(
            load_text("[usage]\nvolcengine_rate_limit = 0\n"),
            Err(ConfigError::Invalid(_))
        ));
    }

    /// `text` as control.toml, loaded without environment overrides.
    fn load_text(text: &str) -> Result<ControlConfig, ConfigError> {
        load_text_with(text, |_| None)
    }

    /// `text` as control.toml, loaded with `env` as the environment.
    fn load_text_with(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ControlConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.toml");
        std::fs::write(&path, text).unwrap();
        ControlConfig::load(Some(&path), env)
    }

    #[test]
    fn debug_shows_no_secret() {
        let config =
            load_text("[store]\nurl = \"postgres://cloudphone:db-pass-1@10.0.0.2:5432/cp\"\n")
                .unwrap();
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("db-pass-1"), "{shown}");
        assert!(shown.contains("postgres://cloudphone:<redacted>@10.0.0.2:5432/cp"));
        assert_eq!(
            redact_url_password("sqlite:///var/lib/c/control.db?mode=rwc"),
            "sqlite:///var/lib/c/control.db?mode=rwc"
        );
        assert_eq!(
            redact_url_password("postgres://u@h/db"),
            "postgres://u@h/db"
        );
    }

    #[test]
    fn tls_files_go_together() {
        let lone = load_text("[http]\ntls_cert = \"/etc/c/cert.pem\"\n");
        assert!(matches!(lone, Err(ConfigError::Invalid(_))));
        let config =
            load_text("[http]\ntls_cert = \"/etc/c/cert.pem\"\ntls_key = \"/etc/c/key.pem\"\n")
                .unwrap();
        let key = config.http.tls_key.as_deref();
        assert_eq!(key, Some(Path::new("/etc/c/key.pem")));
        assert!(matches!(
            load_text("[usage]\nsecrets_key_credential = \"../key\"\n"),
            Err(ConfigError::Invalid(_))
        ));
    }

    /// The removed shared secret is refused with a message saying what replaced it.
    #[test]
    fn the_old_enrollment_token_is_refused_clearly() {
        let error = load_text("[nodes]\nenrollment_token = \"change-me\"\n").unwrap_err();
        assert!(error.to_string().contains("join-token"), "{error}");
        let env = |name: &str| (name == "CLOUDPHONE_ENROLLMENT_TOKEN").then(|| "x".to_string());
        assert!(ControlConfig::load(None, env).is_err());
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(matches!(
            load_text("lisen = \"x\"\n"),
            Err(ConfigError::File(
                cloudphone_daemon::FileError::Parse { .. }
            ))
        ));
        let env = |name: &str| (name == "CLOUDPHONE_LISTEN").then(|| "nope".to_string());
        assert!(matches!(
            ControlConfig::load(None, env),
            Err(ConfigError::Env { .. })
        ));
    }
}
