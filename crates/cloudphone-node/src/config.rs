//! The node's configuration: a TOML file, then `CLOUDPHONE_NODE_*` environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    pub android: AndroidSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Where the gRPC server binds.
    pub listen: SocketAddr,
    /// How control reaches it (announced); defaults to `http://<listen>`.
    pub advertise: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/healthz`, `/metrics` and WebRTC signaling.
    pub listen: SocketAddr,
    /// How viewers reach the signaling endpoint; defaults to `ws://<listen>`.
    pub public_url: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlLink {
    /// Control's base URL, for announcing this node. Empty: wait for control to dial in.
    pub url: String,
    /// Shared secret for announcements. Never logged.
    pub enrollment_token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct X11Section {
    /// Lowest X display number instances use.
    pub first_display: u32,
    /// Shell command each instance runs inside its sandbox; empty for the built-in default.
    pub launcher: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AndroidSection {
    /// The adb binary.
    pub adb: PathBuf,
    /// Devices or emulators this host may hand out, one per instance.
    pub serials: Vec<String>,
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
            android: AndroidSection::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            advertise: String::new(),
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
        }
    }
}

impl Default for AndroidSection {
    fn default() -> Self {
        Self {
            adb: PathBuf::from("/usr/bin/adb"),
            serials: Vec::new(),
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
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl NodeConfig {
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config: NodeConfig = match path {
            None => Self::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.display().to_string(),
                    source,
                })?
            }
        };
        if let Some(v) = env("CLOUDPHONE_NODE_ENROLLMENT_TOKEN") {
            config.control.enrollment_token = v;
        }
        if let Some(v) = env("CLOUDPHONE_NODE_CONTROL_URL") {
            config.control.url = v;
        }
        if config.grpc.advertise.is_empty() {
            config.grpc.advertise = format!("http://{}", config.grpc.listen);
        }
        if config.http.public_url.is_empty() {
            config.http.public_url = format!("ws://{}", config.http.listen);
        }
        if !matches!(config.runtime.as_str(), "x11" | "synthetic" | "android") {
            return Err(ConfigError::Invalid(format!(
                "runtime must be x11, synthetic or android, not {:?}",
                config.runtime
            )));
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

    #[test]
    fn defaults_fill_advertised_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = \"h1\"\nruntime = \"synthetic\"\n[grpc]\nlisten = \"127.0.0.1:7000\"\n",
        )
        .unwrap();
        let config = NodeConfig::load(Some(&path), |_| None).unwrap();
        assert_eq!(config.grpc.advertise, "http://127.0.0.1:7000");
        assert_eq!(config.http.public_url, "ws://127.0.0.1:8090");
        assert_eq!(config.runtime, "synthetic");
    }

    #[test]
    fn unknown_runtime_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "runtime = \"vm\"\n").unwrap();
        assert!(matches!(
            NodeConfig::load(Some(&path), |_| None),
            Err(ConfigError::Invalid(_))
        ));
    }
}
