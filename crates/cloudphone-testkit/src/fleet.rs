//! A whole deployment for tests: real `cloudphone-control` and `cloudphone-node` processes on
//! ephemeral ports, a tenant made by the admin CLI, and HTTP helpers speaking the public API.
//!
//! The daemons bind port 0 on their first start and report the ports they got through
//! `--ready-file`; a restart binds the same ports again, as a restarted host keeps its address.
//!
//! The node enrolls as an operator's would: before its first start the fleet mints a join
//! token with the admin CLI (`node join-token`) and puts it in the node's config; the node
//! keeps its certificate in its state dir from then on. The fleet's own calls to control's
//! `ControlPlane` use a control-role certificate from `node client-cert`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloudphone_proto::node_v1::{self as pb, control_plane_client::ControlPlaneClient};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::process::{Daemon, binary, output_of};
use crate::wait_for;

/// Heartbeat timeout the tests configure; the bound for marking a node down is 1.25 × this.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 1_500;
/// The node's id.
pub const NODE_ID: &str = "node-a";

pub struct Fleet {
    pub dir: tempfile::TempDir,
    /// Control's API base URL; known once control has started.
    pub api: String,
    /// Control's API port; 0 until control has started.
    pub control_port: u16,
    /// Port of control's node-facing gRPC listener (`[nodes].listen`); 0 until started.
    pub nodes_port: u16,
    pub store_url: String,
    pub control: Option<Daemon>,
    pub node: Option<Daemon>,
    /// The node's (gRPC, HTTP) ports; 0 until the node has started.
    pub node_ports: (u16, u16),
    /// The node's `capacity`.
    pub node_capacity: u32,
    /// The node's `[x11] first_display`, apart from concurrent test processes' and kept
    /// across node restarts.
    pub first_display: u32,
    pub runtime: &'static str,
    /// IAM token lifetime the control is configured with.
    pub token_ttl_secs: u64,
    /// Control's `[nodes] heartbeat_timeout_ms` ([`HEARTBEAT_TIMEOUT_MS`] unless a test sets it).
    pub heartbeat_timeout_ms: u64,
    /// TOML appended to control's config (whole sections, e.g. `"[usage]\n…"`).
    pub control_extra: String,
    /// TOML appended to the node's config (whole sections, e.g. `"[webrtc]\n…"`).
    pub node_extra: String,
    /// The region the node announces (control's own is `cn-north-7`).
    pub node_region: String,
    pub http: reqwest::Client,
    /// The address control listens on: `127.0.0.1`, or its [`crate::netns::Host`]'s address
    /// once started there ([`Fleet::start_control_in`]).
    pub control_ip: std::net::Ipv4Addr,
}

impl Fleet {
    pub fn new(store_url: Option<String>, runtime: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store_url = store_url
            .unwrap_or_else(|| format!("sqlite://{}/control.db?mode=rwc", dir.path().display()));
        Self {
            api: String::new(),
            control_port: 0,
            nodes_port: 0,
            store_url,
            dir,
            control: None,
            node: None,
            node_ports: (0, 0),
            node_capacity: 4,
            first_display: first_display(),
            runtime,
            token_ttl_secs: 86_400,
            heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS,
            control_extra: String::new(),
            node_extra: String::new(),
            node_region: "cn-north-7".into(),
            http: reqwest::Client::new(),
            control_ip: std::net::Ipv4Addr::LOCALHOST,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_control_config(&self) -> PathBuf {
        self.write_config_as("control.toml", self.control_port, self.nodes_port)
    }

    /// Control's config at `name` with the fleet's store, CA and settings, on these ports.
    fn write_config_as(&self, name: &str, http_port: u16, nodes_port: u16) -> PathBuf {
        self.write_config_at(name, self.control_ip, http_port, nodes_port)
    }

    /// [`Fleet::write_config_as`] listening on `ip` (a [`crate::netns::Host`]'s address).
    fn write_config_at(
        &self,
        name: &str,
        ip: std::net::Ipv4Addr,
        http_port: u16,
        nodes_port: u16,
    ) -> PathBuf {
        let path = self.path(name);
        let text = format!(
            "listen = \"{ip}:{}\"\nregion = \"cn-north-7\"\n[store]\nurl = \"{}\"\n\
             [nodes]\nlisten = \"{ip}:{}\"\nheartbeat_timeout_ms = {}\nca_dir = \"{}\"\n[iam]\ntoken_ttl_secs = {}\n{}",
            http_port,
            self.store_url,
            nodes_port,
            self.heartbeat_timeout_ms,
            self.path("pki").display(),
            self.token_ttl_secs,
            self.control_extra
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The config of another control process on the fleet's store (a replica), on ports of
    /// its own: `<name>.toml`.
    pub fn write_replica_config(&self, name: &str) -> PathBuf {
        self.write_config_as(&format!("{name}.toml"), 0, 0)
    }

    /// Starts another control process on the fleet's store and CA (a replica: on PostgreSQL;
    /// SQLite refuses a second one) named `name`, and waits until it serves. The fleet's
    /// [`Fleet::api`] stays the first control's.
    pub async fn add_control(&self, name: &str) -> Replica {
        self.add_control_with(name, &binary("cloudphone-control"))
            .await
    }

    /// Starts control and waits until it has bound its listeners (not until it serves: see
    /// [`Fleet::wait_healthy`]); sets [`Fleet::api`] and the ports.
    pub fn start_control(&mut self) {
        self.spawn_control(&binary("cloudphone-control"));
    }

    /// [`Fleet::start_control`] with another build of `cloudphone-control` (e.g. a release one).
    pub fn spawn_control(&mut self, bin: &Path) {
        let config = self.write_control_config();
        let (control, (http, grpc)) =
            self.spawn_ready("control", bin, &["serve", "--config", path_str(&config)]);
        self.control = Some(control);
        self.control_port = http;
        self.nodes_port = grpc;
        self.api = format!("http://127.0.0.1:{http}");
    }

    /// Starts the node and waits until it has bound its listeners; sets [`Fleet::node_ports`].
    pub fn start_node(&mut self) {
        self.spawn_node(&binary("cloudphone-node"));
    }

    /// [`Fleet::start_node`] with another build of `cloudphone-node` (e.g. a release one).
    pub fn spawn_node(&mut self, bin: &Path) {
        let (grpc, http) = self.node_ports;
        let path = self.path("node.toml");
        // Only a node that has not enrolled yet needs a join token.
        let join_token = if self.node_identity_dir().join("node.pem").exists() {
            String::new()
        } else {
            self.join_token("10m")
        };
        let text = format!(
            "node_id = \"{NODE_ID}\"\nregion = \"{region}\"\nstate_dir = \"{}\"\ncapacity = {}\n\
             runtime = \"{}\"\nheartbeat_interval_ms = 250\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n[control]\nendpoint = \"{}\"\njoin_token = \"{join_token}\"\n\
             [x11]\nfirst_display = {}\n{}",
            self.path("node-state").display(),
            self.node_capacity,
            self.runtime,
            self.nodes_endpoint(),
            self.first_display,
            with_ice_interfaces(&self.node_extra),
            region = self.node_region,
        );
        std::fs::write(&path, text).unwrap();
        let (node, (http, grpc)) = self.spawn_ready("node", bin, &["--config", path_str(&path)]);
        self.node = Some(node);
        self.node_ports = (grpc, http);
    }

    /// Starts another node of the fleet's runtime and capacity, enrolled with its own join
    /// token as `node_id`, its state in `node-state-<node_id>`, and waits until control has
    /// it up. The caller keeps the daemon (dropping it stops the node).
    pub async fn start_extra_node(&self, node_id: &str) -> Daemon {
        self.start_node_at(node_id, None, "127.0.0.1", &crate::ice_interfaces())
            .await
    }

    /// A node as `node_id`, in network namespace `netns` when given, listening on `ip`,
    /// gathering ICE candidates on `interfaces`; waits until control has it up.
    async fn start_node_at(
        &self,
        node_id: &str,
        netns: Option<&str>,
        ip: &str,
        interfaces: &[String],
    ) -> Daemon {
        let path = self.path(&format!("node-{node_id}.toml"));
        let text = format!(
            "node_id = \"{node_id}\"\nregion = \"cn-north-7\"\nstate_dir = \"{}\"\ncapacity = {}\n\
             runtime = \"{}\"\nheartbeat_interval_ms = 250\n[grpc]\nlisten = \"{ip}:0\"\n\
             [http]\nlisten = \"{ip}:0\"\n[control]\nendpoint = \"{}\"\njoin_token = \"{}\"\n{}",
            self.path(&format!("node-state-{node_id}")).display(),
            self.node_capacity,
            self.runtime,
            self.nodes_endpoint(),
            self.join_token("10m"),
            with_interfaces(&self.node_extra, interfaces),
        );
        std::fs::write(&path, text).unwrap();
        let (node, _) = self.spawn_ready_in(
            netns,
            &format!("node-{node_id}"),
            &binary("cloudphone-node"),
            &["--config", path_str(&path)],
        );
        wait_for(
            &format!("node {node_id} up"),
            Duration::from_secs(30),
            || async {
                let nodes = self.list_nodes().await?;
                nodes
                    .iter()
                    .any(|n| n.node_id == node_id && n.health() == pb::NodeHealth::Up)
                    .then_some(())
            },
        )
        .await;
        node
    }

    /// Spawns `bin` with `args` and a `--ready-file`, logging to `<name>.log`; returns it once
    /// it has written its ports there.
    fn spawn_ready(&self, name: &str, bin: &Path, args: &[&str]) -> (Daemon, (u16, u16)) {
        self.spawn_ready_in(None, name, bin, args)
    }

    /// [`Fleet::spawn_ready`] in network namespace `netns` when given.
    fn spawn_ready_in(
        &self,
        netns: Option<&str>,
        name: &str,
        bin: &Path,
        args: &[&str],
    ) -> (Daemon, (u16, u16)) {
        let log = self.path(&format!("{name}.log"));
        let ready = self.path(&format!("{name}.ready"));
        let _ = std::fs::remove_file(&ready);
        let mut args = args.to_vec();
        args.extend(["--ready-file", path_str(&ready)]);
        let daemon = Daemon::spawn_in(netns, bin, &args, &log);
        (daemon, read_ready_file(&ready, &log))
    }

    pub fn create_tenant(&self, domain: &str, password: &str) -> Value {
        let config = self.write_control_config();
        let mut command = std::process::Command::new(binary("cloudphone-control"));
        command
            .args([
                "tenant",
                "create",
                "--config",
                path_str(&config),
                "--domain",
                domain,
                "--user",
                "dev",
            ])
            .args(["--project", "cn-north-7"])
            .env("CLOUDPHONE_TENANT_PASSWORD", password);
        let out = output_of(&mut command, "tenant create");
        serde_json::from_slice(&out.stdout).expect("tenant create prints JSON")
    }

    /// Runs an admin CLI command against the fleet's store; returns its JSON output.
    pub fn admin(&self, args: &[&str]) -> Value {
        let config = self.write_control_config();
        let mut command = std::process::Command::new(binary("cloudphone-control"));
        command.args(args).args(["--config", path_str(&config)]);
        let out = output_of(&mut command, &format!("{args:?}"));
        serde_json::from_slice(&out.stdout).expect("admin commands print JSON")
    }

    /// `GET path` on control's API with no credentials (a page, `/metrics`).
    pub async fn get_unauthenticated(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn get_json(&self, url: &str) -> Option<Value> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    pub async fn wait_healthy(&self, base: &str) {
        let url = format!("{base}/healthz");
        wait_for(&url, Duration::from_secs(60), || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    /// Control's node-facing gRPC endpoint, as nodes are configured with it.
    pub fn nodes_endpoint(&self) -> String {
        format!("http://{}:{}", self.control_ip, self.nodes_port)
    }

    /// A fresh single-use join token from the admin CLI (`node join-token --ttl <ttl>`).
    pub fn join_token(&self, ttl: &str) -> String {
        let out = self.admin(&["node", "join-token", "--ttl", ttl]);
        out["join_token"]
            .as_str()
            .expect("join_token in the output")
            .to_string()
    }

    /// Where the node keeps its key, certificate and control's CA.
    pub fn node_identity_dir(&self) -> PathBuf {
        self.path("node-state").join("identity")
    }

    /// The (certificate, key, CA) PEMs of a control-role client certificate from the fleet's CA,
    /// made once by the admin CLI's `node client-cert`.
    pub fn control_client_cert(&self) -> (String, String, String) {
        let dir = self.path("operator");
        if !dir.join("control.pem").exists() {
            let out = dir.to_str().expect("utf-8 temp path").to_string();
            self.admin(&["node", "client-cert", "--out", &out]);
        }
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        (read("control.pem"), read("control.key"), read("ca.pem"))
    }

    /// An mTLS channel to `endpoint` (an `http://` one is dialed as `https://`) trusting only
    /// `ca_pem`, expecting the certificate to name `server_name`, presenting `client`
    /// (certificate, key) when given.
    pub fn tls_channel(
        endpoint: &str,
        server_name: &str,
        ca_pem: &str,
        client: Option<(&str, &str)>,
    ) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(server_name);
        if let Some((cert, key)) = client {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(cloudphone_proto::identity::tls_uri(endpoint))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }

    /// Every node control knows, through `ControlPlane.ListNodes` (with a control-role
    /// certificate); `None` while control does not answer.
    pub async fn list_nodes(&self) -> Option<Vec<pb::NodeInfo>> {
        let (cert, key, ca) = self.control_client_cert();
        let channel = Self::tls_channel(
            &self.nodes_endpoint(),
            cloudphone_proto::identity::CONTROL_NAME,
            &ca,
            Some((&cert, &key)),
        );
        let mut client = ControlPlaneClient::new(channel);
        Some(
            client
                .list_nodes(pb::ListNodesRequest {})
                .await
                .ok()?
                .into_inner()
                .nodes,
        )
    }

    /// The first node's health as control last recorded it: `"up"` or `"down"`.
    pub async fn node_status(&self) -> Option<String> {
        let nodes = self.list_nodes().await?;
        match nodes.first()?.health() {
            pb::NodeHealth::Up => Some("up".to_string()),
            pb::NodeHealth::Down => Some("down".to_string()),
            pb::NodeHealth::Unspecified => None,
        }
    }

    pub async fn wait_node(&self, status: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        wait_for(&format!("node {status}"), timeout, || async {
            (self.node_status().await.as_deref() == Some(status)).then_some(())
        })
        .await;
        started.elapsed()
    }

    pub async fn token(&self, domain: &str, password: &str) -> reqwest::Response {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "dev", "password": password, "domain": {"name": domain}}}},
            "scope": {"project": {"name": "cn-north-7"}}}});
        self.http
            .post(format!("{}/v3/auth/tokens", self.api))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Logs in (scoped to the tenant's project), which must succeed; returns the token
    /// (`X-Subject-Token`) and the response body.
    async fn token_and_body(&self, domain: &str, password: &str) -> (String, Value) {
        let response = self.token(domain, password).await;
        assert_eq!(response.status(), 201);
        let token = response.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string();
        (token, response.json().await.unwrap())
    }

    /// Logs in (scoped to the tenant's project) and returns the token with the ids it names.
    pub async fn scoped_login(&self, domain: &str, password: &str) -> ScopedLogin {
        let (token, body) = self.token_and_body(domain, password).await;
        let id = |v: &Value| v.as_str().expect("id in the token body").to_string();
        ScopedLogin {
            token,
            project_id: id(&body["token"]["project"]["id"]),
            tenant_id: id(&body["token"]["user"]["domain"]["id"]),
        }
    }

    pub async fn login(&self, domain: &str, password: &str) -> String {
        let (token, body) = self.token_and_body(domain, password).await;
        assert!(body["token"]["expires_at"].as_str().unwrap().ends_with('Z'));
        token
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api))
            .header("x-auth-token", token)
            .header("x-request-id", "req-fleet-1");
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status != 404 {
            assert_eq!(
                response.headers()["x-request-id"],
                "req-fleet-1",
                "x-request-id is echoed"
            );
        }
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn list(&self, token: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                "/v1/instances/batch-query?page_no=1&page_size=50",
                token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn wait_running_status(
        &self,
        token: &str,
        wanted: i64,
        count: usize,
        timeout: Duration,
    ) -> Duration {
        let started = Instant::now();
        wait_for(
            &format!("{count} instances with running_status {wanted}"),
            timeout,
            || async {
                let body = self.list(token).await;
                let rows = body["data"]["result"].as_array()?.clone();
                (rows.len() == count && rows.iter().all(|r| r["running_status"] == wanted))
                    .then_some(())
            },
        )
        .await;
        started.elapsed()
    }
}

/// A further control process of a [`Fleet`] ([`Fleet::add_control`]); dropping it stops it.
pub struct Replica {
    pub daemon: Daemon,
    /// Its API base URL.
    pub api: String,
    /// Its node-facing gRPC port.
    pub nodes_port: u16,
}

/// A user's IAM token and the project and tenant (IAM domain) ids it is scoped to.
pub struct ScopedLogin {
    pub token: String,
    pub project_id: String,
    pub tenant_id: String,
}

/// Waits for a daemon's `--ready-file` and returns its (http, grpc) ports.
fn read_ready_file(ready: &Path, log: &Path) -> (u16, u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ports = std::fs::read_to_string(ready).ok().and_then(|text| {
            let v: Value = serde_json::from_str(&text).ok()?;
            let port = |key: &str| -> Option<u16> {
                let addr: std::net::SocketAddr = v[key].as_str()?.parse().ok()?;
                Some(addr.port())
            };
            Some((port("http")?, port("grpc")?))
        });
        if let Some(ports) = ports {
            return ports;
        }
        assert!(
            Instant::now() < deadline,
            "no {} after 60 s; log:\n{}",
            ready.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An X display range for this fleet's node: apart from other test processes' (by pid) and
/// from this process's other fleets (by a counter).
fn first_display() -> u32 {
    static FLEETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = FLEETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    200 + (std::process::id().wrapping_mul(7).wrapping_add(n) % 500) * 4
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A CreateInstance body ordering `count` x11 720P phones.
pub fn order(count: u32) -> String {
    order_sku("kp.x11.720p", count)
}

/// A CreateInstance body in the seeds' own spelling, for any SKU.
pub fn order_sku(sku: &str, count: u32) -> String {
    json!({"os": "AOSP11", "instanceSkuld": sku, "bandSkuld": "kp.bandwidth",
        "regionld": "cn-north-7", "instanceNamePrefix": "fleet", "bandSize": 4, "count": count,
        "chargeParam": {"chargingMode": 1, "periodType": 2, "periodNum": 1, "isAutoPay": 1, "isAutoRenew": 0}})
    .to_string()
}

impl Fleet {
    /// A running deployment: tenants `acme` and `other` (password `correct-horse-1`/`-2`),
    /// control, one node of `runtime`, and the node registered.
    pub async fn up(runtime: &'static str) -> Self {
        Self::up_with(runtime, "", "").await
    }

    /// [`Fleet::up`] with TOML appended to control's and the node's configs.
    pub async fn up_with(runtime: &'static str, control_extra: &str, node_extra: &str) -> Self {
        let mut fleet = Fleet::new(None, runtime);
        fleet.control_extra = control_extra.to_string();
        fleet.node_extra = node_extra.to_string();
        fleet.bring_up().await
    }

    /// [`Fleet::up`] with the node announcing `region` rather than control's own.
    pub async fn up_in_region(runtime: &'static str, region: &str) -> Self {
        let mut fleet = Fleet::new(None, runtime);
        fleet.node_region = region.to_string();
        fleet.bring_up().await
    }

    /// Tenants, control, then the node, registered.
    async fn bring_up(mut self) -> Self {
        self.create_tenant("acme", "correct-horse-1");
        self.create_tenant("other", "correct-horse-2");
        self.start_control();
        self.wait_healthy(&self.api.clone()).await;
        self.start_node();
        self.wait_node("up", Duration::from_secs(30)).await;
        self
    }

    /// Orders `count` instances of the node's runtime for `token` and waits until they run.
    pub async fn running_instances(&self, token: &str, count: u32) -> Vec<String> {
        let sku = format!("kp.{}.720p", self.runtime);
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/instances/create",
                token,
                Some(&order_sku(&sku, count)),
            )
            .await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (200, Some("0")),
            "{body}"
        );
        let ids: Vec<String> = body["data"]["instanceInfos"]
            .as_array()
            .expect("instanceInfos")
            .iter()
            .filter_map(|i| i["instanceId"].as_str().map(str::to_string))
            .collect();
        self.wait_running_status(token, 2, count as usize, Duration::from_secs(60))
            .await;
        ids
    }

    /// A new AK/SK pair of the token's user, through IAM's create-permanent-access-key form
    /// (`POST /v3.0/OS-CREDENTIAL/credentials`; the secret is shown this once).
    pub async fn access_key(&self, token: &str, description: &str) -> (String, String) {
        let (status, created) = self
            .post_token_only(
                "/v3.0/OS-CREDENTIAL/credentials",
                token,
                &json!({"credential": {"description": description}}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let field = |name: &str| created["credential"][name].as_str().unwrap().to_string();
        (field("access"), field("secret"))
    }

    /// POSTs JSON with only the token (no `x-request-id`), as a client of an operation whose
    /// seed page lists no request id would; returns status and body.
    pub async fn post_token_only(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.api))
            .header("x-auth-token", token)
            .json(body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// POSTs JSON with the token and a request id; returns status and body.
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(&body.to_string()))
            .await
    }

    /// Where the node keeps an instance's data on the host.
    pub fn instance_data_dir(&self, instance_id: &str) -> PathBuf {
        self.path("node-state")
            .join("instances")
            .join(instance_id)
            .join("data")
    }
}

/// The `error_code` of an answer, or `<none>`.
pub fn error_code(body: &Value) -> &str {
    body["error_code"].as_str().unwrap_or("<none>")
}

/// `extra` (node TOML) with `[webrtc] ice_interfaces` set to the default route's interface,
/// merged into its own `[webrtc]` section when it has one.
fn with_ice_interfaces(extra: &str) -> String {
    with_interfaces(extra, &crate::ice_interfaces())
}

/// Several hosts ([`crate::netns`]): control, its replicas and nodes each in a namespace of
/// their own, reached over the bridge.
impl Fleet {
    /// [`Fleet::start_control`] in `host`'s namespace, listening on its address; from then on
    /// [`Fleet::api`] and [`Fleet::nodes_endpoint`] name that address. Its config is
    /// `control-<netns>.toml` (the admin CLI keeps writing `control.toml`).
    pub fn start_control_in(&mut self, host: &crate::netns::Host) {
        self.control_ip = host.addr;
        let config = self.write_config_at(
            &format!("control-{}.toml", host.netns),
            host.addr,
            self.control_port,
            self.nodes_port,
        );
        let (control, (http, grpc)) = self.spawn_ready_in(
            Some(&host.netns),
            "control",
            &binary("cloudphone-control"),
            &["serve", "--config", path_str(&config)],
        );
        self.control = Some(control);
        self.control_port = http;
        self.nodes_port = grpc;
        self.api = format!("http://{}:{http}", host.addr);
    }

    /// [`Fleet::add_control`] in `host`'s namespace, listening on its address.
    pub async fn add_control_in(&self, name: &str, host: &crate::netns::Host) -> Replica {
        let config = self.write_config_at(&format!("{name}.toml"), host.addr, 0, 0);
        let (daemon, (http, grpc)) = self.spawn_ready_in(
            Some(&host.netns),
            name,
            &binary("cloudphone-control"),
            &["serve", "--config", path_str(&config)],
        );
        let replica = Replica {
            daemon,
            api: format!("http://{}:{http}", host.addr),
            nodes_port: grpc,
        };
        self.wait_healthy(&replica.api).await;
        replica
    }

    /// [`Fleet::start_extra_node`] in `host`'s namespace: it listens on the host's address,
    /// gathers ICE candidates on the host's interface only, dials control at
    /// [`Fleet::nodes_endpoint`]; waits until control has it up.
    pub async fn start_node_in(&self, host: &crate::netns::Host, node_id: &str) -> Daemon {
        let ip = host.addr.to_string();
        self.start_node_at(
            node_id,
            Some(&host.netns),
            &ip,
            std::slice::from_ref(&host.interface),
        )
        .await
    }

    /// Health of node `node_id` as control last recorded it: `"up"` or `"down"`.
    pub async fn health_of(&self, node_id: &str) -> Option<String> {
        let nodes = self.list_nodes().await?;
        match nodes.iter().find(|n| n.node_id == node_id)?.health() {
            pb::NodeHealth::Up => Some("up".to_string()),
            pb::NodeHealth::Down => Some("down".to_string()),
            pb::NodeHealth::Unspecified => None,
        }
    }
}

/// `extra` (node TOML) with `[webrtc] ice_interfaces` set to `interfaces`, merged into its own
/// `[webrtc]` section when it has one.
fn with_interfaces(extra: &str, interfaces: &[String]) -> String {
    let line = format!("ice_interfaces = {interfaces:?}\n");
    if extra.contains("[webrtc]\n") {
        extra.replacen("[webrtc]\n", &format!("[webrtc]\n{line}"), 1)
    } else {
        format!("{extra}\n[webrtc]\n{line}")
    }
}

impl Fleet {
    /// [`Fleet::add_control`] with another build of `cloudphone-control` (e.g. the API bench's
    /// release one), so every replica of a measured deployment is the same build.
    pub async fn add_control_with(&self, name: &str, bin: &Path) -> Replica {
        let config = self.write_replica_config(name);
        let (daemon, (http, grpc)) =
            self.spawn_ready(name, bin, &["serve", "--config", path_str(&config)]);
        let replica = Replica {
            daemon,
            api: format!("http://127.0.0.1:{http}"),
            nodes_port: grpc,
        };
        self.wait_healthy(&replica.api).await;
        replica
    }
}
