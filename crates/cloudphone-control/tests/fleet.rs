//! End to end: real `cloudphone-control` and `cloudphone-node` processes on ephemeral ports,
//! talking gRPC; a tenant created by the admin CLI logs in through IAM, orders instances through
//! the public API, sees them run, sees them go unknown when their node is SIGKILLed and come
//! back when it restarts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloudphone_testkit::process::{Daemon, binary};
use cloudphone_testkit::{free_port, wait_for};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// Heartbeat timeout the tests configure; the bound for marking a node down is 1.25 × this.
const HEARTBEAT_TIMEOUT_MS: u64 = 1_500;
const ENROLLMENT: &str = "enroll-test-secret";

struct Fleet {
    dir: tempfile::TempDir,
    api: String,
    control_port: u16,
    store_url: String,
    control: Option<Daemon>,
    node: Option<Daemon>,
    node_ports: (u16, u16),
    runtime: &'static str,
    http: reqwest::Client,
}

impl Fleet {
    fn new(store_url: Option<String>, runtime: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store_url = store_url
            .unwrap_or_else(|| format!("sqlite://{}/control.db?mode=rwc", dir.path().display()));
        let control_port = free_port();
        Self {
            api: format!("http://127.0.0.1:{control_port}"),
            control_port,
            store_url,
            dir,
            control: None,
            node: None,
            node_ports: (free_port(), free_port()),
            runtime,
            http: reqwest::Client::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_control_config(&self) -> PathBuf {
        let path = self.path("control.toml");
        let text = format!(
            "listen = \"127.0.0.1:{}\"\nregion = \"cn-north-7\"\n[store]\nurl = \"{}\"\n\
             [nodes]\nheartbeat_timeout_ms = {HEARTBEAT_TIMEOUT_MS}\nenrollment_token = \"{ENROLLMENT}\"\n",
            self.control_port, self.store_url
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn start_control(&mut self) {
        let config = self.write_control_config();
        let log = self.path("control.log");
        self.control = Some(Daemon::spawn(
            &binary("cloudphone-control"),
            &["serve", "--config", path_str(&config)],
            &log,
        ));
    }

    fn start_node(&mut self) {
        let (grpc, http) = self.node_ports;
        let path = self.path("node.toml");
        let text = format!(
            "node_id = \"node-a\"\nregion = \"cn-north-7\"\nstate_dir = \"{}\"\ncapacity = 4\n\
             runtime = \"{}\"\nheartbeat_interval_ms = 250\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n[control]\nurl = \"{}\"\nenrollment_token = \"{ENROLLMENT}\"\n\
             [x11]\nfirst_display = {}\n",
            self.path("node-state").display(),
            self.runtime,
            self.api,
            // Keep concurrent test processes off each other's displays.
            200 + (grpc % 500) as u32 * 4,
        );
        std::fs::write(&path, text).unwrap();
        let log = self.path("node.log");
        self.node = Some(Daemon::spawn(
            &binary("cloudphone-node"),
            &["--config", path_str(&path)],
            &log,
        ));
    }

    fn create_tenant(&self, domain: &str, password: &str) -> Value {
        let config = self.write_control_config();
        let out = std::process::Command::new(binary("cloudphone-control"))
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
            .env("CLOUDPHONE_TENANT_PASSWORD", password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tenant create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("tenant create prints JSON")
    }

    /// Runs an admin CLI command against the fleet's store; returns its JSON output.
    fn admin(&self, args: &[&str]) -> Value {
        let config = self.write_control_config();
        let out = std::process::Command::new(binary("cloudphone-control"))
            .args(args)
            .args(["--config", path_str(&config)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("admin commands print JSON")
    }

    async fn get_json(&self, url: &str) -> Option<Value> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    async fn wait_healthy(&self, base: &str) {
        let url = format!("{base}/healthz");
        wait_for(&url, Duration::from_secs(60), || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    async fn node_status(&self) -> Option<String> {
        let nodes = self
            .get_json(&format!("{}/internal/v1/nodes", self.api))
            .await?;
        nodes["nodes"].as_array()?.first()?["status"]
            .as_str()
            .map(str::to_string)
    }

    async fn wait_node(&self, status: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        wait_for(&format!("node {status}"), timeout, || async {
            (self.node_status().await.as_deref() == Some(status)).then_some(())
        })
        .await;
        started.elapsed()
    }

    async fn token(&self, domain: &str, password: &str) -> reqwest::Response {
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

    async fn login(&self, domain: &str, password: &str) -> String {
        let response = self.token(domain, password).await;
        assert_eq!(response.status(), 201);
        let token = response.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap();
        assert!(body["token"]["expires_at"].as_str().unwrap().ends_with('Z'));
        token
    }

    async fn call(
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

    async fn list(&self, token: &str) -> Value {
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

    async fn wait_running_status(
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

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn order(count: u32) -> String {
    json!({"os": "AOSP11", "instanceSkuld": "kp.x11.720p", "bandSkuld": "kp.bandwidth",
        "regionld": "cn-north-7", "instanceNamePrefix": "fleet", "bandSize": 4, "count": count,
        "chargeParam": {"chargingMode": 1, "periodType": 2, "periodNum": 1, "isAutoPay": 1, "isAutoRenew": 0}})
    .to_string()
}

async fn whole_flow(store_url: Option<String>) {
    let mut fleet = Fleet::new(store_url, "x11");
    let tenant = fleet.create_tenant("acme", "correct-horse-1");
    assert_eq!(tenant["domain"], "acme");
    fleet.create_tenant("other", "correct-horse-2");
    fleet.admin(&[
        "user",
        "create",
        "--domain",
        "acme",
        "--user",
        "ops",
        "--password",
        "correct-horse-3",
    ]);
    fleet.admin(&[
        "project",
        "create",
        "--domain",
        "acme",
        "--project",
        "eu-west-0",
    ]);
    fleet.start_control();
    fleet.wait_healthy(&fleet.api.clone()).await;
    fleet.start_node();
    fleet
        .wait_healthy(&format!("http://127.0.0.1:{}", fleet.node_ports.1))
        .await;
    fleet.wait_node("up", Duration::from_secs(30)).await;

    // IAM: wrong password is 401; the right one gives a token.
    assert_eq!(fleet.token("acme", "wrong-password").await.status(), 401);
    let token = fleet.login("acme", "correct-horse-1").await;
    // The second user of the tenant, scoped to the second project, logs in too.
    let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "ops", "password": "correct-horse-3", "domain": {"name": "acme"}}}},
        "scope": {"project": {"name": "eu-west-0"}}}});
    let ops = fleet
        .http
        .post(format!("{}/v3/auth/tokens", fleet.api))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status(), 201);
    let ops_body: Value = ops.json().await.unwrap();
    assert_eq!(ops_body["token"]["project"]["name"], "eu-west-0");
    let other = fleet.login("other", "correct-horse-2").await;

    // BatchShowSku offers what the node runs.
    let (status, skus) = fleet
        .call(
            reqwest::Method::GET,
            "/v1/instances/sku?type=0",
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = skus["data"]["skuSpecResponseList"][0]["skuResponses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["cbcSkuId"].as_str())
        .collect();
    assert!(ids.contains(&"kp.x11.720p"), "{skus}");

    // Order beyond capacity: 40010 and nothing created. Then a real order.
    let (status, body) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/instances/create",
            &token,
            Some(&order(5)),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("KOOPHONE.API.40010"))
    );
    let (status, body) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/instances/create",
            &token,
            Some(&order(2)),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (200, Some("0")),
        "{body}"
    );
    assert_eq!(body["data"]["instanceInfos"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["data"]["instanceInfos"][0]["instanceName"],
        "fleet-00001"
    );

    let booted = fleet
        .wait_running_status(&token, 2, 2, Duration::from_secs(60))
        .await;
    eprintln!("two x11 instances ordered to running in {booted:?}");
    let listing = fleet.list(&token).await;
    assert_eq!(listing["data"]["total_count"], 2);
    assert_eq!(listing["error_code"], "0");
    let row = &listing["data"]["result"][0];
    assert_eq!(
        (row["account_name"].as_str(), row["project_name"].as_str()),
        (Some("acme"), Some("cn-north-7"))
    );

    // Another tenant sees none of them, even by id.
    let first_id = row["instance_id"].as_str().unwrap().to_string();
    let (_, theirs) = fleet
        .call(
            reqwest::Method::GET,
            &format!("/v1/instances/batch-query?page_no=1&page_size=10&instance_id={first_id}"),
            &other,
            None,
        )
        .await;
    assert_eq!(theirs["data"]["total_count"], 0);

    // The spec's codes for bad requests.
    let (status, body) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/instances/create",
            &token,
            Some("{not json"),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("KOOPHONE.API.1000"))
    );
    let (status, body) = fleet
        .call(
            reqwest::Method::GET,
            "/v1/instances/batch-query?page_no=1&page_size=10",
            "bogus",
            None,
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (401, Some("KOOPHONE.API.6001"))
    );
    let no_id = fleet
        .http
        .get(format!(
            "{}/v1/instances/batch-query?page_no=1&page_size=10",
            fleet.api
        ))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(no_id.status(), 200);
    assert_eq!(
        no_id.json::<Value>().await.unwrap()["error_code"],
        "KOOPHONE.API.0002"
    );

    // A frozen node keeps its connection open but stops beating: the heartbeat timeout alone
    // must mark it down within the bound.
    let bound = Duration::from_millis(HEARTBEAT_TIMEOUT_MS * 5 / 4) + Duration::from_millis(500);
    fleet.node.as_ref().unwrap().signal(Signal::SIGSTOP);
    let silent_after = fleet.wait_node("down", bound).await;
    eprintln!("frozen node marked down {silent_after:?} after SIGSTOP (bound {bound:?})");
    assert!(
        silent_after >= Duration::from_millis(HEARTBEAT_TIMEOUT_MS / 2),
        "down before the timeout could pass"
    );
    fleet.node.as_ref().unwrap().signal(Signal::SIGCONT);
    fleet.wait_node("up", Duration::from_secs(10)).await;

    // SIGKILL the node: marked down within the bound, its instances show unknown (0).
    fleet.node.as_mut().unwrap().stop_with(Signal::SIGKILL);
    let down_after = fleet.wait_node("down", bound).await;
    eprintln!("node marked down {down_after:?} after SIGKILL (bound {bound:?})");
    fleet
        .wait_running_status(&token, 0, 2, Duration::from_secs(2))
        .await;

    // Restart it on the same state dir: it comes back and re-adopts both instances.
    fleet.start_node();
    fleet.wait_node("up", Duration::from_secs(30)).await;
    let back = fleet
        .wait_running_status(&token, 2, 2, Duration::from_secs(60))
        .await;
    eprintln!("instances running again {back:?} after node restart");

    // Metrics on both daemons.
    let metrics = fleet
        .http
        .get(format!("{}/metrics", fleet.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cloudphone_http_requests_total"),
        "{metrics}"
    );
    let node_metrics = fleet
        .http
        .get(format!("http://127.0.0.1:{}/metrics", fleet.node_ports.1))
        .send()
        .await
        .unwrap();
    assert_eq!(node_metrics.status(), 200);

    // SIGTERM: both daemons stop cleanly and promptly.
    for daemon in [
        fleet.node.as_mut().unwrap(),
        fleet.control.as_mut().unwrap(),
    ] {
        let started = Instant::now();
        let status = daemon
            .stop_with(Signal::SIGTERM)
            .expect("daemon was running");
        assert!(
            status.success(),
            "{} exited with {status:?}: {}",
            daemon.name,
            daemon.log_text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{} took {:?} to stop",
            daemon.name,
            started.elapsed()
        );
    }
    let log = std::fs::read_to_string(fleet.path("control.log")).unwrap();
    assert!(!log.contains("correct-horse"), "a password reached the log");
    assert!(!log.contains(&token), "a token reached the log");
    assert!(log.contains("req-fleet-1"), "request ids are in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_on_sqlite() {
    whole_flow(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_on_postgres() {
    whole_flow(Some(cloudphone_testkit::postgres::fresh_database())).await;
}
