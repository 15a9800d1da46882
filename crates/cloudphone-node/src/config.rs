//! The node's configuration: a TOML file, then `CLOUDPHONE_NODE_*` environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cloudphone_daemon::Secret;
use serde::Deserialize;

/// Everything the node agent needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Stable id of this host in the fleet.
    pub node_id: String,
    /// Region the host sells instances in; must match control's.
    pub region: String,
    /// Where instance data and bookkeeping live; survives restarts.
    pub state_dir: PathBuf,
    /// Instances this host runs at most.
    pub capacity: u32,
    /// "x11", "synthetic" or "android".
    pub runtime: String,
    /// How often a heartbeat goes to control.
    pub heartbeat_interval_ms: u64,
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub control: ControlLink,
    pub x11: X11Section,
    pub sandbox: SandboxSection,
    pub android: AndroidSection,
    pub webrtc: WebRtcSection,
    pub apps: AppsSection,
    pub live: LiveSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Where the gRPC server binds.
    pub listen: SocketAddr,
    /// How control reaches it (announced); defaults to `https://<listen>`.
    pub advertise: String,
    /// Serve `NodeAgent` without TLS or client certificates, to anyone who reaches `listen`.
    /// Only for a node driven directly by tests or benchmarks on loopback, never with control
    /// (control speaks only mTLS to nodes). Off by default.
    pub plaintext: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/healthz`, `/metrics` and WebRTC signaling.
    pub listen: SocketAddr,
    /// How viewers reach the signaling endpoint; defaults to `ws://<listen>`.
    pub public_url: String,
}

/// The live edge (seed 003): RTMP ingest and play on `rtmp_listen`; HTTP-FLV (and HLS, WHEP) on
/// the `[http]` listener. Off unless `rtmp_listen` is set, so that an upgraded node opens no new
/// port its operator did not ask for (`deploy/config/node.toml` and the tests turn it on).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveSection {
    /// Where the RTMP server binds, e.g. `0.0.0.0:1935`; unset: the node runs no live edge.
    pub rtmp_listen: Option<SocketAddr>,
    /// How publishers and players reach the RTMP server (announced as `live_rtmp_base_url`);
    /// defaults to `rtmp://<rtmp_listen>` with the port actually bound.
    pub public_rtmp_base_url: String,
    /// How players reach HTTP-FLV, HLS and WHEP (announced as `live_http_base_url`); defaults to
    /// `http(s)://` and the host and port of `[http] public_url`.
    pub public_http_base_url: String,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlLink {
    /// Control's node-facing gRPC endpoint (its `[nodes].listen`), for enrolling and announcing
    /// this node, e.g. `https://10.0.0.1:50050` (`http://` is taken as `https://`: the link is
    /// always TLS).
    pub endpoint: String,
    /// The single-use join token from `cloudphone-control node join-token`, needed only until
    /// the node has enrolled (its certificate is then in the state dir). Never logged.
    pub join_token: String,
    /// Removed: read only so that a config still setting it fails with a clear error.
    pub enrollment_token: Option<serde::de::IgnoredAny>,
}

/// The join token stays out of `Debug` (and so out of logs).
impl std::fmt::Debug for ControlLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLink")
            .field("endpoint", &self.endpoint)
            .field(
                "join_token",
                &(!self.join_token.is_empty()).then_some("<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct X11Section {
    /// Lowest X display number instances use.
    pub first_display: u32,
    /// Shell command each instance runs inside its sandbox; empty for the built-in default.
    pub launcher: String,
    /// The X server binary; empty for `/usr/bin/Xvfb`.
    pub xvfb: String,
}

/// How instance sandboxes are confined (x11 runtime); see docs/deploy.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// First host uid/gid of the range instances run as, one each (reserve it for the node
    /// in /etc/subuid and /etc/subgid).
    pub uid_base: u32,
    /// Size of that range: the most instances that can exist at once.
    pub uid_count: u32,
    /// Size of each instance's private `/tmp` and `/run`, MiB.
    pub tmp_size_mib: u64,
    /// Processes and threads one instance may run at once.
    pub pids_max: u64,
    /// Caps below the SKU's memory, CPU (thousandths of a CPU) and largest file; 0: the SKU's.
    pub memory_max_mib: u64,
    pub cpu_max_millis: u64,
    pub file_size_max_mib: u64,
    /// Cap below the SKU's storage on what one instance's data dir holds in total, MiB (the
    /// dir is a filesystem of that size; see docs/deploy.md); 0: the SKU's.
    pub data_max_mib: u64,
    /// Host files instances may run, read-only, at `/run/cloudphone/bin/<name>`:
    /// `name = "/host/path"`.
    pub ro_binds: std::collections::BTreeMap<String, PathBuf>,
    /// More host paths no instance may see (the backup storage, key dirs). The config file
    /// itself, the signaling TLS files and the state dir are always hidden.
    pub hidden_paths: Vec<PathBuf>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        let d = crate::runtime::sandbox::SandboxConfig::default();
        Self {
            uid_base: d.uid_base,
            uid_count: d.uid_count,
            tmp_size_mib: d.tmp_size >> 20,
            pids_max: d.pids_max,
            memory_max_mib: 0,
            cpu_max_millis: 0,
            file_size_max_mib: 0,
            data_max_mib: 0,
            ro_binds: std::collections::BTreeMap::new(),
            hidden_paths: Vec::new(),
        }
    }
}

impl SandboxSection {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(format!("sandbox: {m}")));
        if self.uid_base < 1000
            || self.uid_count == 0
            || self.uid_base.checked_add(self.uid_count).is_none()
        {
            return invalid(
                "uid_base must be >= 1000 and uid_base + uid_count fit in a u32, uid_count > 0"
                    .into(),
            );
        }
        if (self.uid_base..self.uid_base + self.uid_count).contains(&65534) {
            return invalid("the uid range must not hold nobody (65534)".into());
        }
        if self.tmp_size_mib == 0 || self.pids_max == 0 {
            return invalid("tmp_size_mib and pids_max must be > 0".into());
        }
        if self.ro_binds.len() > crate::runtime::sandbox::MAX_COPIED_BINDS {
            return invalid(format!(
                "at most {} ro_binds",
                crate::runtime::sandbox::MAX_COPIED_BINDS
            ));
        }
        for (name, host) in &self.ro_binds {
            let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
            if !plain || !host.is_absolute() {
                return invalid(format!(
                    "ro_binds: {name:?} must be a plain file name and its host path absolute"
                ));
            }
        }
        Ok(())
    }

    /// The runtime's view, with the paths every sandbox must not see.
    pub fn to_runtime(&self, always_hidden: &[PathBuf]) -> crate::runtime::sandbox::SandboxConfig {
        let nonzero = |v: u64, unit: u64| (v > 0).then(|| v.saturating_mul(unit));
        let mut hidden = always_hidden.to_vec();
        hidden.extend(self.hidden_paths.iter().cloned());
        crate::runtime::sandbox::SandboxConfig {
            uid_base: self.uid_base,
            uid_count: self.uid_count,
            tmp_size: self.tmp_size_mib << 20,
            pids_max: self.pids_max,
            memory_max: nonzero(self.memory_max_mib, 1 << 20),
            cpu_max_millis: nonzero(self.cpu_max_millis, 1),
            file_size_max: nonzero(self.file_size_max_mib, 1 << 20),
            data_max: nonzero(self.data_max_mib, 1 << 20),
            ro_binds: self.ro_binds.clone(),
            hidden,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AndroidSection {
    /// The adb binary.
    pub adb: PathBuf,
    /// Devices or emulators this host may hand out, one per instance.
    pub serials: Vec<String>,
    /// An emulator snapshot (`adb emu avd snapshot load <name>`) holding a clean device:
    /// `emulator-N` serials are wiped between tenants by loading it. Empty: every device is
    /// wiped package by package (see `runtime::android`).
    pub clean_snapshot: String,
}

/// InstallApp downloads: where a tenant's package URL may lead, and how much the node spends
/// fetching. Loopback, link-local, private, ULA, CGNAT and other non-public addresses are
/// refused unless listed here (see `apps::policy`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppsSection {
    /// Whole-download limit: waiting for a slot, connecting, redirects and the body.
    pub download_timeout_secs: u64,
    /// Downloads this node runs at once; more wait for a slot (within the limit above).
    pub max_concurrent_downloads: u32,
    /// Host names (or IP literals) packages may come from whatever they resolve to, e.g. a
    /// private mirror `"apps.internal"`.
    pub allow_hosts: Vec<String>,
    /// Networks packages may come from although they are not public, e.g. `"10.20.0.0/16"`.
    pub allow_cidrs: Vec<String>,
}

impl Default for AppsSection {
    fn default() -> Self {
        Self {
            download_timeout_secs: 600,
            max_concurrent_downloads: 2,
            allow_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
        }
    }
}

/// WebRTC: ICE servers handed to viewers, the node's own ICE addresses, signaling TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcSection {
    /// STUN URLs for viewers and the node's own peers, e.g. `stun:stun.example.com:3478`.
    pub(crate) stun_urls: Vec<String>,
    /// TURN URLs for viewers, without credentials, e.g. `turn:turn.example.com:3478?transport=udp`.
    pub turn_urls: Vec<String>,
    /// coturn `static-auth-secret` the TURN REST credentials are signed with. Never logged;
    /// `CLOUDPHONE_NODE_TURN_SECRET` overrides it.
    pub turn_secret: Secret,
    /// Longest lifetime of issued TURN credentials; a credential never outlives the device
    /// token of the session it is issued for.
    pub turn_ttl_secs: u64,
    /// The host's public address when it sits behind a 1:1 NAT; its host candidates carry
    /// this address instead of the private one. Empty: none.
    pub(crate) public_ip: String,
    /// UDP ports the node's peers use (both 0: any ephemeral port).
    pub(crate) udp_port_min: u16,
    pub(crate) udp_port_max: u16,
    /// Network interfaces the node's ICE candidates come from, e.g. `["eth0"]`; empty: every
    /// interface but loopback (`"lo"` in the list admits loopback).
    pub ice_interfaces: Vec<String>,
    /// PEM certificate chain and key: when both are set, signaling is served as `wss://`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Viewers one instance may have at once.
    pub(crate) max_viewers_per_instance: u32,
    /// How often a running encoder emits a partial usage record.
    pub usage_interval_secs: u64,
    /// `videotestsrc` pattern synthetic instances stream, optionally with properties
    /// (e.g. `"zone-plate kx2=20 ky2=20 kt=1"`); empty for the pipeline's default.
    pub synthetic_pattern: String,
    /// `SCHED_RR` priority (1–99) of the encode pipelines' capture and encode threads; 0 keeps
    /// normal scheduling. Needs root, `CAP_SYS_NICE` or `LimitRTPRIO=` (the shipped unit sets
    /// it); without, the node warns once and streams at normal priority.
    pub(crate) encoder_realtime_priority: u8,
}

impl Default for WebRtcSection {
    fn default() -> Self {
        Self {
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: Secret::default(),
            turn_ttl_secs: 86_400,
            public_ip: String::new(),
            udp_port_min: 0,
            udp_port_max: 0,
            ice_interfaces: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_viewers_per_instance: cloudphone_core::role::MAX_VIEWERS_PER_PHONE as u32,
            usage_interval_secs: 30,
            synthetic_pattern: String::new(),
            encoder_realtime_priority: crate::streaming::priority::DEFAULT_REALTIME_PRIORITY,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: hostname(),
            region: "cn-north-7".into(),
            state_dir: PathBuf::from("/var/lib/cloudphone-node"),
            capacity: 4,
            runtime: "x11".into(),
            heartbeat_interval_ms: 1_000,
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            control: ControlLink::default(),
            x11: X11Section::default(),
            sandbox: SandboxSection::default(),
            android: AndroidSection::default(),
            webrtc: WebRtcSection::default(),
            apps: AppsSection::default(),
            live: LiveSection::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            advertise: String::new(),
            plaintext: false,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            public_url: String::new(),
        }
    }
}

impl Default for X11Section {
    fn default() -> Self {
        Self {
            first_display: 100,
            launcher: String::new(),
            xvfb: String::new(),
        }
    }
}

impl Default for AndroidSection {
    fn default() -> Self {
        Self {
            adb: PathBuf::from("/usr/bin/adb"),
            serials: Vec::new(),
            clean_snapshot: String::new(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] cloudphone_daemon::FileError),
    #[error("{0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Defaults `grpc.advertise` to `https://<grpc>` (`http://` with `grpc.plaintext`) and `http.public_url` to `ws(s)://<http>`
    /// where they are unset, from the addresses actually bound (port 0 resolved). Addresses
    /// still on port 0 are skipped.
    pub(crate) fn fill_advertised(&mut self, grpc: SocketAddr, http: SocketAddr) {
        if self.grpc.advertise.is_empty() && grpc.port() != 0 {
            let scheme = if self.grpc.plaintext { "http" } else { "https" };
            self.grpc.advertise = format!("{scheme}://{grpc}");
        }
        if self.http.public_url.is_empty() && http.port() != 0 {
            let scheme = if self.webrtc.tls_cert.is_some() {
                "wss"
            } else {
                "ws"
            };
            self.http.public_url = format!("{scheme}://{http}");
        }
    }

    /// Defaults `live.public_rtmp_base_url` to `rtmp://<rtmp>` from the address actually bound,
    /// and `live.public_http_base_url` to the origin of `http.public_url` as HTTP (call after
    /// [`NodeConfig::fill_advertised`]).
    pub(crate) fn fill_live_advertised(&mut self, rtmp: SocketAddr) {
        if self.live.public_rtmp_base_url.is_empty() && rtmp.port() != 0 {
            self.live.public_rtmp_base_url = format!("rtmp://{rtmp}");
        }
        if self.live.public_http_base_url.is_empty() {
            // The signaling URL's origin, as HTTP: the same listener serves both.
            let origin = self.http.public_url.trim_end_matches('/');
            self.live.public_http_base_url = if let Some(rest) = origin.strip_prefix("wss://") {
                format!("https://{rest}")
            } else if let Some(rest) = origin.strip_prefix("ws://") {
                format!("http://{rest}")
            } else {
                origin.to_string()
            };
        }
    }

    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config: NodeConfig = cloudphone_daemon::read_toml(path)?;
        config.sandbox.check()?;
        // The file holds the join token and TURN secret: no sandbox may see it.
        if let Some(path) = path {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            config.sandbox.hidden_paths.push(path);
        }
        if config.control.enrollment_token.is_some()
            || env("CLOUDPHONE_NODE_ENROLLMENT_TOKEN").is_some()
        {
            return Err(ConfigError::Invalid(
                "[control].enrollment_token (or CLOUDPHONE_NODE_ENROLLMENT_TOKEN) was removed: \
                 the node enrolls once with a join token from `cloudphone-control node \
                 join-token` in [control].join_token (docs/deploy.md)"
                    .into(),
            ));
        }
        if let Some(v) = env("CLOUDPHONE_NODE_JOIN_TOKEN") {
            config.control.join_token = v;
        }
        if let Some(v) = env("CLOUDPHONE_NODE_CONTROL_ENDPOINT") {
            config.control.endpoint = v;
        }
        if let Some(v) = env("CLOUDPHONE_NODE_TURN_SECRET") {
            config.webrtc.turn_secret = v.into();
        }
        let w = &config.webrtc;
        if (w.udp_port_min == 0) != (w.udp_port_max == 0) || w.udp_port_min > w.udp_port_max {
            return Err(ConfigError::Invalid(
                "webrtc.udp_port_min and udp_port_max must both be 0 or form a range".into(),
            ));
        }
        if w.tls_cert.is_some() != w.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "webrtc.tls_cert and webrtc.tls_key go together".into(),
            ));
        }
        if !w.turn_urls.is_empty() && w.turn_secret.is_empty() {
            return Err(ConfigError::Invalid(
                "webrtc.turn_urls need webrtc.turn_secret (coturn use-auth-secret)".into(),
            ));
        }
        if w.max_viewers_per_instance == 0 || w.usage_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "webrtc.max_viewers_per_instance and usage_interval_secs must be > 0".into(),
            ));
        }
        // A port 0 listen address is only known once bound: `run` fills those in.
        let (grpc, http) = (config.grpc.listen, config.http.listen);
        config.fill_advertised(grpc, http);
        if !matches!(config.runtime.as_str(), "x11" | "synthetic" | "android") {
            return Err(ConfigError::Invalid(format!(
                "runtime must be x11, synthetic or android, not {:?}",
                config.runtime
            )));
        }
        let apps = &config.apps;
        crate::apps::policy::Allowlist::new(&apps.allow_hosts, &apps.allow_cidrs)
            .map_err(ConfigError::Invalid)?;
        if apps.download_timeout_secs == 0 || apps.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid(
                "apps.download_timeout_secs and max_concurrent_downloads must be > 0".into(),
            ));
        }
        if config.capacity == 0 || config.heartbeat_interval_ms < 50 {
            return Err(ConfigError::Invalid(
                "capacity must be > 0 and heartbeat_interval_ms >= 50".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `toml` as the config file, with `env` as the environment.
    fn load(toml: &str, env: impl Fn(&str) -> Option<String>) -> Result<NodeConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml).unwrap();
        NodeConfig::load(Some(&path), env)
    }

    #[test]
    fn the_live_edge_is_off_by_default_and_its_urls_follow_the_listeners() {
        let config = load("node_id = \"h1\"\n", |_| None).unwrap();
        assert_eq!(config.live.rtmp_listen, None);
        let toml = "[http]\npublic_url = \"wss://edge.example.com:8443/\"\n[live]\nrtmp_listen = \"0.0.0.0:0\"\n";
        let mut config = load(toml, |_| None).unwrap();
        config.fill_live_advertised("10.0.0.5:1935".parse().unwrap());
        assert_eq!(config.live.public_rtmp_base_url, "rtmp://10.0.0.5:1935");
        assert_eq!(
            config.live.public_http_base_url,
            "https://edge.example.com:8443"
        );
        let toml = "[live]\npublic_rtmp_base_url = \"rtmp://a:1\"\npublic_http_base_url = \"http://b:2\"\n";
        let mut config = load(toml, |_| None).unwrap();
        config.fill_live_advertised("10.0.0.5:1935".parse().unwrap());
        assert_eq!(
            (
                config.live.public_rtmp_base_url.as_str(),
                config.live.public_http_base_url.as_str()
            ),
            ("rtmp://a:1", "http://b:2")
        );
    }

    #[test]
    fn defaults_fill_advertised_addresses() {
        let toml =
            "node_id = \"h1\"\nruntime = \"synthetic\"\n[grpc]\nlisten = \"127.0.0.1:7000\"\n";
        let config = load(toml, |_| None).unwrap();
        assert_eq!(config.grpc.advertise, "https://127.0.0.1:7000");
        assert_eq!(config.http.public_url, "ws://127.0.0.1:8090");
        assert_eq!(config.runtime, "synthetic");
    }

    #[test]
    fn webrtc_section_parses_and_hides_the_secret() {
        let config = load(
            "[webrtc]\nstun_urls = [\"stun:127.0.0.1:3478\"]\nturn_urls = [\"turn:127.0.0.1:3478\"]\nturn_secret = \"hush\"\nudp_port_min = 40000\nudp_port_max = 40100\n",
            |_| None,
        )
        .unwrap();
        assert_eq!(config.webrtc.turn_secret.expose(), "hush");
        assert_eq!(config.webrtc.udp_port_max, 40100);
        assert!(!format!("{config:?}").contains("hush"));
        // TURN URLs without a secret are refused; the environment can supply it.
        let no_secret = "[webrtc]\nturn_urls = [\"turn:h:1\"]\n";
        assert!(load(no_secret, |_| None).is_err());
        let from_env = load(no_secret, |n| {
            (n == "CLOUDPHONE_NODE_TURN_SECRET").then(|| "s".to_string())
        })
        .unwrap();
        assert_eq!(from_env.webrtc.turn_secret.expose(), "s");
    }

    #[test]
    fn the_join_token_is_hidden_and_the_old_shared_token_refused() {
        let config = load("[control]\njoin_token = \"cpj1.hush\"\n", |_| None).unwrap();
        assert_eq!(config.control.join_token, "cpj1.hush");
        assert!(!format!("{config:?} {config:#?}").contains("hush"));
        let error = load("[control]\nenrollment_token = \"change-me\"\n", |_| None).unwrap_err();
        assert!(error.to_string().contains("join-token"), "{error}");
    }

    #[test]
    fn sandbox_section_hides_the_config_file_and_checks_binds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[sandbox]\nuid_base = 500000\nmemory_max_mib = 512\n[sandbox.ro_binds]\ntool = \"/opt/tool\"\n",
        )
        .unwrap();
        let config = NodeConfig::load(Some(&path), |_| None).unwrap();
        assert!(config.sandbox.hidden_paths.contains(&path));
        let runtime = config.sandbox.to_runtime(&[PathBuf::from("/etc/tls.key")]);
        assert_eq!(runtime.uid_base, 500_000);
        assert_eq!(runtime.memory_max, Some(512 << 20));
        assert_eq!(runtime.cpu_max_millis, None, "0 means the SKU's");
        assert!(runtime.hidden.contains(&PathBuf::from("/etc/tls.key")));
        for bad in [
            "[sandbox.ro_binds]\n\"a/b\" = \"/opt/tool\"\n",
            "[sandbox.ro_binds]\ntool = \"relative/tool\"\n",
            "[sandbox]\nuid_base = 0\n",
            "[sandbox]\nuid_base = 60000\nuid_count = 10000\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(
                    NodeConfig::load(Some(&path), |_| None),
                    Err(ConfigError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_runtime_is_refused() {
        assert!(matches!(
            load("runtime = \"vm\"\n", |_| None),
            Err(ConfigError::Invalid(_))
        ));
    }
}
