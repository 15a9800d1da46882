//! `cargo xtask demo`: control and one node on this machine, a demo tenant and three phones,
//! and a live-API (seed 003) tenant with a group and a stream to push to and play.
//!
//! `--replicas N` (N ≥ 2) runs N control processes instead of one, on a throwaway PostgreSQL
//! cluster (as `cargo xtask test` starts one; SQLite serves one control process only), each on
//! ports of its own with no proxy in front; `demo.json` lists every API URL in `api_urls`.

mod app;
mod live;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::deps::{self, Purpose};
use crate::util::{self, heading};

/// The demo tenant: IAM domain, user and project (the project is named like the region).
const DOMAIN: &str = "demo";
const USER: &str = "demo";
const REGION: &str = "cn-north-7";
/// How many phones the demo orders, and how many the node may run.
const INSTANCES: usize = 3;
const CAPACITY: u32 = 4;
/// The SKU ordered when `GET /v1/instances/sku` does not name one.
const FALLBACK_SKU: &str = "kp.x11.720p";
/// How long each daemon gets to answer `/healthz`, and the node to show up in control.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `1..=`[`MAX_REPLICAS`], else `None`.
fn replica_count(n: &str) -> Option<u32> {
    n.parse().ok().filter(|n| (1..=MAX_REPLICAS).contains(n))
}

/// The most control processes the demo runs (one per name in [`REPLICA_NAMES`], and the first).
const MAX_REPLICAS: u32 = REPLICA_NAMES.len() as u32 + 1;

/// The throwaway cluster's database when the demo runs replicas.
const PG_DATABASE: &str = "cloudphone_demo";

/// Options of `cargo xtask demo`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// Set everything up, print it, then tear down and exit (a smoke test for CI).
    pub(crate) no_wait: bool,
    /// Control processes to run: 1 (the default) on SQLite, more on a throwaway PostgreSQL.
    pub(crate) replicas: u32,
}

impl Options {
    /// `[--no-wait] [--replicas N]` in any order; `None` for anything else.
    pub(crate) fn parse(flags: &[&str]) -> Option<Self> {
        let mut options = Options {
            no_wait: false,
            replicas: 1,
        };
        let mut rest = flags.iter();
        while let Some(flag) = rest.next() {
            match *flag {
                "--no-wait" => options.no_wait = true,
                "--replicas" => options.replicas = replica_count(rest.next()?)?,
                _ => options.replicas = replica_count(flag.strip_prefix("--replicas=")?)?,
            }
        }
        Some(options)
    }
}

pub(crate) fn run(options: Options) -> Result<()> {
    let interrupted = util::interrupt_flag()?;

    heading(Purpose::Demo.heading());
    deps::ensure(Purpose::Demo)?;

    heading("build the daemons");
    let root = util::repo_root();
    util::build_daemons(false)?;
    let demo_app = app::build()?;
    let bin = root.join("target/debug");
    let control_bin = bin.join("cloudphone-control");
    let node_bin = bin.join("cloudphone-node");

    heading("prepare target/demo");
    let dir = root.join("target/demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove the previous {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let runtime = pick_runtime(&dir);
    // Replicas share one database: SQLite serves one control process, so they get PostgreSQL.
    // Declared before the daemons, so it stops after they have.
    let pg = if options.replicas > 1 {
        heading("start PostgreSQL for the replicas");
        Some(crate::pg::Postgres::start(PG_DATABASE)?)
    } else {
        None
    };
    let ports = util::free_ports(6)?;
    // Replicas 2..=N: API, node-facing gRPC and live API ports each.
    let replica_ports = util::free_ports(3 * (options.replicas.max(1) as usize - 1))?;
    let config = DemoConfig {
        dir: dir.clone(),
        api_port: ports[0],
        grpc_port: ports[1],
        node_http_port: ports[2],
        control_nodes_port: ports[3],
        rtmp_port: ports[4],
        live_api_port: ports[5],
        operator: live::Key {
            id: format!(
                "DEMOOPERATOR{}",
                util::random_alnum(20).to_ascii_uppercase()
            ),
            secret: util::random_alnum(32),
        },
        runtime,
        demo_app,
        store_url: pg.as_ref().map(|pg| pg.url(PG_DATABASE)),
        replicas: replica_ports
            .chunks(3)
            .map(|p| ReplicaPorts {
                api: p[0],
                nodes: p[1],
                live_api: p[2],
            })
            .collect(),
    };
    let control_toml = dir.join("control.toml");
    let node_toml = dir.join("node.toml");
    std::fs::write(&control_toml, config.control_toml())?;
    // It holds the live API's operator secret.
    std::fs::set_permissions(
        &control_toml,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    println!("wrote {}", control_toml.display());
    let mut replica_tomls = Vec::new();
    for (i, _) in config.replicas.iter().enumerate() {
        let path = dir.join(format!("control-{}.toml", i + 2));
        std::fs::write(&path, config.replica_toml(i))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        println!("wrote {}", path.display());
        replica_tomls.push(path);
    }

    heading("create the demo tenant");
    let password = util::random_alnum(16);
    let out = util::output(
        Command::new(&control_bin)
            .args(["tenant", "create", "--config"])
            .arg(&control_toml)
            .args(["--domain", DOMAIN, "--user", USER, "--password", &password])
            .args(["--project", REGION]),
    )?;
    match out.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => match serde_json::from_str::<Value>(line) {
            Ok(tenant) => println!("tenant: {tenant}"),
            Err(e) => println!("warning: tenant create printed no JSON ({e}): {line}"),
        },
        None => println!("warning: tenant create printed nothing"),
    }

    heading("enroll the node");
    // As an operator would: a single-use join token from the admin CLI goes into the node's
    // config; the node enrolls with it on its first start.
    let out = util::output(
        Command::new(&control_bin)
            .args(["node", "join-token", "--ttl", "1h", "--config"])
            .arg(&control_toml),
    )?;
    let join_token = serde_json::from_str::<Value>(out.trim())
        .ok()
        .and_then(|v| v["join_token"].as_str().map(str::to_owned))
        .ok_or_else(|| anyhow!("node join-token printed no token: {out}"))?;
    std::fs::write(&node_toml, config.node_toml(&join_token))?;
    std::fs::create_dir_all(config.node_state_dir())?;
    println!("wrote {} with a join token", node_toml.display());

    heading("start control and node");
    let mut daemons = Daemons {
        running: Vec::new(),
        interrupted: interrupted.clone(),
    };
    daemons.spawn(
        "control",
        Command::new(&control_bin)
            .arg("serve")
            .arg("--config")
            .arg(&control_toml),
        &dir.join("control.log"),
    )?;
    let api = config.api_url();
    let http = Http::new();
    daemons.wait_for("control /healthz", || {
        Ok(http.get(&format!("{api}/healthz"), &[])?.status == 200)
    })?;
    daemons.spawn(
        "node",
        Command::new(&node_bin).arg("--config").arg(&node_toml),
        &dir.join("node.log"),
    )?;
    let node_http = format!("http://127.0.0.1:{}", config.node_http_port);
    daemons.wait_for("node /healthz", || {
        Ok(http.get(&format!("{node_http}/healthz"), &[])?.status == 200)
    })?;
    daemons.wait_for("the node to register with control", || {
        let listed = util::output(
            Command::new(&control_bin)
                .args(["node", "list", "--json", "--config"])
                .arg(&control_toml),
        )?;
        Ok(count_up_nodes(&serde_json::from_str(&listed)?) >= 1)
    })?;
    // The other replicas once the first has migrated the database and the node has joined
    // (each loads the node registry from the store as it starts).
    for (i, toml) in replica_tomls.iter().enumerate() {
        let name = REPLICA_NAMES.get(i).copied().unwrap_or("control-n");
        daemons.spawn(
            name,
            Command::new(&control_bin)
                .arg("serve")
                .arg("--config")
                .arg(toml),
            &dir.join(format!("{name}.log")),
        )?;
    }
    let api_urls = config.api_urls();
    for url in api_urls.iter().skip(1) {
        daemons.wait_for(&format!("control replica {url} /healthz"), || {
            Ok(http.get(&format!("{url}/healthz"), &[])?.status == 200)
        })?;
    }

    heading("order the demo phones");
    let token = iam_token(&http, &api, &password)?;
    let sku = first_sku(&http, &api, &token);
    println!("sku: {sku}");
    let instance_ids = create_instances(&http, &api, &token, &sku)?;
    println!("instances: {}", instance_ids.join(", "));

    heading("open the live edge (VS API)");
    let vs_endpoint = config.live_api_url();
    daemons.wait_for("control's live API", || {
        // Any answer will do (an unsigned `GET /` is refused): the listener is up.
        http.get(&format!("{vs_endpoint}/"), &[])?;
        Ok(true)
    })?;
    let live = live::provision(&http, &vs_endpoint, &config.operator, STARTUP_TIMEOUT)?;
    println!(
        "VS tenant {} (key {}), group {}, stream {}",
        live.user_id, live.tenant.id, live.group_id, live.stream_id
    );

    let console = format!("{api}/console/");
    let demo = json!({
        "api_url": api,
        "api_urls": api_urls,
        "store": if pg.is_some() { "postgresql" } else { "sqlite" },
        "console_url": console,
        "live_console_url": format!("{api}/console/live"),
        "iam": {"domain": DOMAIN, "user": USER, "password": password, "project": REGION},
        "instance_ids": instance_ids,
        "surveillance": live.to_json(),
    });
    let demo_json = dir.join("demo.json");
    std::fs::write(&demo_json, serde_json::to_string_pretty(&demo)? + "\n")?;

    heading("cloudphone demo is up");
    println!("API:        {api}");
    if api_urls.len() > 1 {
        println!(
            "Replicas:   {} control processes on one PostgreSQL: {}",
            api_urls.len(),
            api_urls.join(", ")
        );
    }
    println!("Console:    {console}");
    println!("IAM:        domain {DOMAIN}, user {USER}, password {password}, project {REGION}");
    println!("Phones:     {}", instance_ids.join(", "));
    println!("Runtime:    {}", config.runtime.describe());
    println!(
        "Logs:       {}, {}",
        dir.join("control.log").display(),
        dir.join("node.log").display()
    );
    println!("Details:    {}", demo_json.display());
    println!(
        "\nTry the API (paste into a shell):\n\n{}\n",
        curl_example(&api, &password)
    );
    print_live(&live, &api, &config.operator);

    if options.no_wait {
        heading("check the live edge: push, then play HTTP-FLV");
        let push_log = dir.join("push.log");
        let mut push = live::spawn_push(&live.push_url, &push_log)?;
        let played = live::flv_bytes(&live.play_urls["flv"], 64 * 1024, STARTUP_TIMEOUT);
        let _ = stop_within(&mut push, Duration::from_secs(3));
        match played {
            Ok(n) => println!("played {n} bytes of HTTP-FLV from the demo's push"),
            Err(e) => {
                let said = util::tail(&push_log, 10);
                daemons.shutdown()?;
                return Err(e.context(format!("the push said: {}", said.trim())));
            }
        }
        println!("--no-wait: stopping the demo");
        return daemons.shutdown();
    }
    println!("Press Ctrl-C to stop.");
    let died = daemons.wait_until_interrupted_or_dead();
    println!();
    daemons.shutdown()?;
    died
}

/// How the demo node runs phones: with real X displays when Xvfb works here, else synthetic.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Runtime {
    X11 { first_display: u32 },
    Synthetic { why: String },
}

impl Runtime {
    fn name(&self) -> &'static str {
        match self {
            Runtime::X11 { .. } => "x11",
            Runtime::Synthetic { .. } => "synthetic",
        }
    }

    fn describe(&self) -> String {
        match self {
            Runtime::X11 { first_display } => format!("x11 (displays from :{first_display})"),
            Runtime::Synthetic { why } => format!("synthetic ({why})"),
        }
    }
}

fn pick_runtime(dir: &Path) -> Runtime {
    match probe_xvfb(&dir.join("xvfb-probe.log")) {
        Ok(display) => {
            println!("Xvfb works (probed on :{display}): the node uses the x11 runtime");
            Runtime::X11 {
                first_display: free_display_range(100, CAPACITY),
            }
        }
        Err(e) => {
            println!("no display server ({e:#}): the node uses the synthetic runtime");
            Runtime::Synthetic {
                why: format!("Xvfb unavailable: {e:#}"),
            }
        }
    }
}

/// Whether X display `n` is taken: its lock file names a live process. (Xvfb itself replaces a
/// lock left by a dead server, and so does the node's x11 runtime.)
fn display_taken(n: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/tmp/.X{n}-lock")) else {
        return false;
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => !matches!(
            kill(Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        ),
        // An unreadable lock: leave the display alone.
        _ => true,
    }
}

/// The first display `>= from` such that it and the `count - 1` after it are all free.
fn free_display_range(from: u32, count: u32) -> u32 {
    (from..)
        .find(|&n| (n..n + count).all(|d| !display_taken(d)))
        .expect("some display range is free")
}

/// Starts Xvfb on a free display (from :99) for a moment; returns the display it used.
fn probe_xvfb(log: &Path) -> Result<u32> {
    let display = free_display_range(99, 1);
    let mut child = Command::new("Xvfb")
        .arg(format!(":{display}"))
        .args(["-nolisten", "tcp", "-screen", "0", "320x240x24"])
        .stdin(Stdio::null())
        .stdout(File::create(log)?)
        .stderr(File::create(log)?)
        .spawn()
        .context("cannot run Xvfb")?;
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let result = loop {
        if let Some(status) = child.try_wait()? {
            let said = util::tail(log, 3);
            break Err(anyhow!("Xvfb exited: {status} {}", said.trim()));
        }
        if socket.exists() {
            break Ok(display);
        }
        if Instant::now() > deadline {
            break Err(anyhow!("Xvfb did not create {} in 5 s", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGTERM, so Xvfb removes its lock file and socket (SIGKILL would leave them behind).
    if let Ok((_, false)) = stop_within(&mut child, Duration::from_secs(3)) {
        eprintln!("warning: the probe Xvfb ignored SIGTERM; killed it");
    }
    result
}

/// Names of the replicas after the first (`control`), as their logs are named.
const REPLICA_NAMES: [&str; 15] = [
    "control-2",
    "control-3",
    "control-4",
    "control-5",
    "control-6",
    "control-7",
    "control-8",
    "control-9",
    "control-10",
    "control-11",
    "control-12",
    "control-13",
    "control-14",
    "control-15",
    "control-16",
];

/// The ports of a control replica after the first.
#[derive(Clone, Copy, Debug)]
struct ReplicaPorts {
    api: u16,
    nodes: u16,
    live_api: u16,
}

/// Everything the two demo configs are made from.
struct DemoConfig {
    /// `target/demo`, absolute.
    dir: PathBuf,
    api_port: u16,
    grpc_port: u16,
    node_http_port: u16,
    /// Control's node-facing gRPC port (`[nodes].listen`), which the node announces itself to.
    control_nodes_port: u16,
    /// The node's RTMP port (`[live] rtmp_listen`): pushes and RTMP plays of the live edge.
    rtmp_port: u16,
    /// Control's live API port (`[live_api] listen`).
    live_api_port: u16,
    /// The live API's operator key, made per run; only `control.toml` holds its secret.
    operator: live::Key,
    runtime: Runtime,
    /// The demo phone's app, which the node's x11 instances run instead of xeyes.
    demo_app: PathBuf,
    /// The throwaway PostgreSQL database of the replicas; `None`: SQLite in `dir`.
    store_url: Option<String>,
    /// Control replicas after the first (empty: one control process).
    replicas: Vec<ReplicaPorts>,
}

impl DemoConfig {
    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn live_api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.live_api_port)
    }

    fn node_state_dir(&self) -> PathBuf {
        self.dir.join("node-state")
    }

    /// Every control process's API base URL, the first's first.
    fn api_urls(&self) -> Vec<String> {
        std::iter::once(self.api_url())
            .chain(
                self.replicas
                    .iter()
                    .map(|r| format!("http://127.0.0.1:{}", r.api)),
            )
            .collect()
    }

    fn control_toml(&self) -> String {
        self.control_toml_on(self.api_port, self.control_nodes_port, self.live_api_port)
    }

    /// The config of replica `i + 2` (`replicas[i]`): the first's, on its own ports.
    fn replica_toml(&self, i: usize) -> String {
        let r = self.replicas[i];
        self.control_toml_on(r.api, r.nodes, r.live_api)
    }

    fn control_toml_on(&self, api_port: u16, nodes_port: u16, live_api_port: u16) -> String {
        let db = self.store_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.dir.join("control.db").display()
            )
        });
        format!(
            r#"# Written by `cargo xtask demo`; deploy/config/control.toml explains every key.
listen = {listen}
public_url = {public_url}
region = {region}

[store]
url = {db}

[nodes]
listen = {nodes_listen}
heartbeat_timeout_ms = 3000
ca_dir = {ca_dir}

[iam]
token_ttl_secs = 86400

[live_api]
listen = {live_listen}
operator_access_key_id = {operator_id}
operator_access_key_secret = {operator_secret}
"#,
            listen = toml_str(&format!("127.0.0.1:{api_port}")),
            nodes_listen = toml_str(&format!("127.0.0.1:{nodes_port}")),
            public_url = toml_str(&format!("http://127.0.0.1:{api_port}")),
            region = toml_str(REGION),
            db = toml_str(&db),
            ca_dir = toml_str(&self.dir.join("pki").display().to_string()),
            live_listen = toml_str(&format!("127.0.0.1:{live_api_port}")),
            operator_id = toml_str(&self.operator.id),
            operator_secret = toml_str(&self.operator.secret),
        )
    }

    /// The node's config, enrolling with `join_token` on its first start.
    fn node_toml(&self, join_token: &str) -> String {
        let first_display = match self.runtime {
            Runtime::X11 { first_display } => first_display,
            Runtime::Synthetic { .. } => 100,
        };
        format!(
            r#"# Written by `cargo xtask demo`; deploy/config/node.toml explains every key.
node_id = "demo-node-1"
region = {region}
state_dir = {state_dir}
capacity = {CAPACITY}
runtime = {runtime}
heartbeat_interval_ms = 1000

[grpc]
listen = {grpc_listen}
advertise = {grpc_advertise}

[http]
listen = {http_listen}
public_url = {http_public}

[control]
endpoint = {control}
join_token = {token}

[x11]
first_display = {first_display}
launcher = {launcher}

[sandbox.ro_binds]
{app_name} = {app_path}

[android]
adb = "/usr/bin/adb"
serials = []

[live]
rtmp_listen = {rtmp_listen}
"#,
            region = toml_str(REGION),
            state_dir = toml_str(&self.node_state_dir().display().to_string()),
            runtime = toml_str(self.runtime.name()),
            grpc_listen = toml_str(&format!("127.0.0.1:{}", self.grpc_port)),
            grpc_advertise = toml_str(&format!("https://127.0.0.1:{}", self.grpc_port)),
            http_listen = toml_str(&format!("127.0.0.1:{}", self.node_http_port)),
            http_public = toml_str(&format!("ws://127.0.0.1:{}", self.node_http_port)),
            control = toml_str(&format!("https://127.0.0.1:{}", self.control_nodes_port)),
            token = toml_str(join_token),
            rtmp_listen = toml_str(&format!("127.0.0.1:{}", self.rtmp_port)),
            launcher = toml_str(&app::launcher()),
            app_name = app::ro_bind(&self.demo_app).0,
            app_path = toml_str(&app::ro_bind(&self.demo_app).1),
        )
    }
}

/// The live part of the banner: the VS tenant's key, the push commands and the play URLs. The
/// operator's key is named, its secret only by where it is kept.
fn print_live(live: &live::Live, api: &str, operator: &live::Key) {
    println!("Live API:   {} (seed 003, docs/live-api.md)", live.endpoint);
    println!(
        "  operator: {} (secret in target/demo/control.toml)",
        operator.id
    );
    println!(
        "  tenant:   {} AccessKeyId {} AccessKeySecret {}",
        live.user_id, live.tenant.id, live.tenant.secret
    );
    println!("  group {}, stream {}", live.group_id, live.stream_id);
    println!("Live console: {api}/console/live (sign in with the tenant's key above)");
    println!(
        "\nPush a test pattern (paste into a shell):\n\n{}\n\nor with ffmpeg:\n\n{}\n",
        live::gst_push_command(&live.push_url),
        live::ffmpeg_push_command(&live.push_url)
    );
    println!("Play it (while the push runs):");
    for (protocol, url) in &live.play_urls {
        let note = match protocol.as_str() {
            "webrtc" => " (WHEP: POST an SDP offer)",
            "hls" => " (ffplay, VLC, Safari)",
            _ => "",
        };
        println!("  {protocol:<7} {url}{note}");
    }
    println!();
}

/// A TOML basic string. JSON's string escapes are a subset of TOML's, so serde_json does it.
fn toml_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// How many nodes a `cloudphone-control node list` answer lists as up, whatever its envelope: every
/// object with `"status": "up"` counts once.
fn count_up_nodes(v: &Value) -> usize {
    match v {
        Value::Object(map) if map.get("status").and_then(Value::as_str) == Some("up") => 1,
        Value::Object(map) => map.values().map(count_up_nodes).sum(),
        Value::Array(items) => items.iter().map(count_up_nodes).sum(),
        _ => 0,
    }
}

fn iam_body(password: &str) -> Value {
    json!({"auth": {
        "identity": {
            "methods": ["password"],
            "password": {"user": {"name": USER, "password": password, "domain": {"name": DOMAIN}}}
        },
        "scope": {"project": {"name": REGION}}
    }})
}

fn iam_token(http: &Http, api: &str, password: &str) -> Result<String> {
    let resp = http.post(&format!("{api}/v3/auth/tokens"), &[], &iam_body(password))?;
    if resp.status != 201 {
        bail!(
            "POST /v3/auth/tokens answered {}: {}",
            resp.status,
            resp.body
        );
    }
    resp.subject_token
        .context("POST /v3/auth/tokens answered 201 without X-Subject-Token")
}

/// The first SKU control offers, or [`FALLBACK_SKU`]. Accepts the short `data.skus[].sku_id`
/// form and the documented `data.skuSpecResponseList[].skuResponses[].cbcSkuId` one.
fn first_sku(http: &Http, api: &str, token: &str) -> String {
    let request_id = util::random_uuid();
    let found = http
        .get(
            &format!("{api}/v1/instances/sku?type=0"),
            &[("X-Auth-Token", token), ("x-request-id", &request_id)],
        )
        .and_then(|resp| {
            let body = resp.json()?;
            if resp.status != 200 || body["error_code"] != "0" {
                bail!("answered {}: {}", resp.status, resp.body);
            }
            Ok(sku_from(&body))
        });
    match found {
        Ok(Some(sku)) => sku,
        Ok(None) => {
            println!("GET /v1/instances/sku listed no SKU; using {FALLBACK_SKU}");
            FALLBACK_SKU.to_owned()
        }
        Err(e) => {
            println!("GET /v1/instances/sku failed ({e:#}); using {FALLBACK_SKU}");
            FALLBACK_SKU.to_owned()
        }
    }
}

fn sku_from(v: &Value) -> Option<String> {
    let data = &v["data"];
    if let Some(id) = data["skus"][0]["sku_id"].as_str() {
        return Some(id.to_owned());
    }
    let regions = data["skuSpecResponseList"].as_array()?;
    let region = regions
        .iter()
        .find(|r| r["regionId"] == REGION)
        .or(regions.first())?;
    region["skuResponses"][0]["cbcSkuId"]
        .as_str()
        .map(str::to_owned)
}

fn create_body(sku: &str) -> Value {
    json!({
        "os": "AOSP11",
        "instanceSkuld": sku,
        "bandSkuld": "kp.bandwidth",
        "regionId": REGION,
        "instanceNamePrefix": "demo",
        "bandSize": 4,
        "count": INSTANCES,
        "chargeParam": {
            "chargingMode": 1,
            "periodType": 2,
            "periodNum": 1,
            "isAutoPay": 1,
            "isAutoRenew": 0
        }
    })
}

fn create_instances(http: &Http, api: &str, token: &str, sku: &str) -> Result<Vec<String>> {
    let request_id = util::random_uuid();
    let resp = http.post(
        &format!("{api}/v1/instances/create"),
        &[("X-Auth-Token", token), ("x-request-id", &request_id)],
        &create_body(sku),
    )?;
    let body = resp.json().with_context(|| {
        format!(
            "POST /v1/instances/create answered {}: {}",
            resp.status, resp.body
        )
    })?;
    if resp.status != 200 || body["error_code"] != "0" {
        bail!(
            "POST /v1/instances/create answered {}: {}",
            resp.status,
            resp.body
        );
    }
    instance_ids_from(&body).with_context(|| format!("no instance ids in {}", resp.body))
}

fn instance_ids_from(body: &Value) -> Option<Vec<String>> {
    let ids: Vec<String> = body["data"]["instanceInfos"]
        .as_array()?
        .iter()
        .filter_map(|i| i["instanceId"].as_str().map(str::to_owned))
        .collect();
    (!ids.is_empty()).then_some(ids)
}

/// Shell commands a user can paste: get a token, then list their phones.
fn curl_example(api: &str, password: &str) -> String {
    let body = iam_body(password).to_string();
    format!(
        "TOKEN=$(curl -si -X POST {api}/v3/auth/tokens -H 'Content-Type: application/json' \\\n  \
         -d '{body}' \\\n  \
         | awk 'tolower($1)==\"x-subject-token:\" {{print $2}}' | tr -d '\\r')\n\
         curl -s \"{api}/v1/instances/batch-query?page_no=1&page_size=100\" \\\n  \
         -H \"X-Auth-Token: $TOKEN\" -H \"x-request-id: $(cat /proc/sys/kernel/random/uuid)\""
    )
}

/// A small blocking HTTP client; non-2xx answers are values, not errors.
struct Http {
    agent: ureq::Agent,
}

struct Reply {
    status: u16,
    subject_token: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

impl Http {
    fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Everything is on 127.0.0.1: never go through a proxy from the environment.
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        Http {
            agent: config.into(),
        }
    }

    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.call(), url)
    }

    fn post(&self, url: &str, headers: &[(&str, &str)], body: &Value) -> Result<Reply> {
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.send(body.to_string()), url)
    }

    fn reply(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        url: &str,
    ) -> Result<Reply> {
        let resp = resp.with_context(|| format!("request to {url} failed"))?;
        let status = resp.status().as_u16();
        let subject_token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().read_to_string().unwrap_or_default();
        Ok(Reply {
            status,
            subject_token,
            body,
        })
    }
}

/// A daemon the demo started.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// The demo's daemons; dropping them stops them (the last started first).
struct Daemons {
    running: Vec<Daemon>,
    /// Set by Ctrl-C (or SIGTERM): waits give up, and the daemons are stopped.
    interrupted: Arc<AtomicBool>,
}

impl Daemons {
    fn spawn(&mut self, name: &'static str, cmd: &mut Command, log: &Path) -> Result<()> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Under systemd, a daemon must not notify our service manager about itself.
            .env_remove("NOTIFY_SOCKET")
            // Its own process group: Ctrl-C reaches only us, and we stop the daemons in order.
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // SAFETY: prctl(2) is async-signal-safe, and the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // Should we die without cleaning up, the daemon gets SIGTERM from the kernel.
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        println!("$ {} > {}", util::display(cmd), log.display());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.running.push(Daemon {
            name,
            child,
            log: log.to_owned(),
        });
        Ok(())
    }

    /// Polls `ready` until it returns true, failing early if a daemon dies.
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
        print!("waiting for {what} ... ");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let start = Instant::now();
        let mut last_error = None;
        loop {
            if self.interrupted.load(Ordering::SeqCst) {
                println!("interrupted");
                bail!("interrupted while waiting for {what}");
            }
            self.check_alive()?;
            match ready() {
                Ok(true) => {
                    println!("ok ({} ms)", start.elapsed().as_millis());
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => last_error = Some(e),
            }
            if start.elapsed() > STARTUP_TIMEOUT {
                println!("timed out");
                let logs: Vec<String> = self
                    .running
                    .iter()
                    .map(|d| {
                        format!(
                            "--- {} ({}):\n{}",
                            d.name,
                            d.log.display(),
                            util::tail(&d.log, 20)
                        )
                    })
                    .collect();
                bail!(
                    "gave up waiting for {what} after {} s (last error: {})\n{}",
                    STARTUP_TIMEOUT.as_secs(),
                    last_error.map_or("none".to_owned(), |e| format!("{e:#}")),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Fails if a daemon has exited, with the end of its log.
    fn check_alive(&mut self) -> Result<()> {
        for d in &mut self.running {
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "{} exited: {status}; the end of {}:\n{}",
                    d.name,
                    d.log.display(),
                    util::tail(&d.log, 30)
                );
            }
        }
        Ok(())
    }

    /// Returns `Ok` on Ctrl-C (or SIGTERM), `Err` when a daemon dies first.
    fn wait_until_interrupted_or_dead(&mut self) -> Result<()> {
        while !self.interrupted.load(Ordering::SeqCst) {
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("interrupted: stopping the demo");
        Ok(())
    }

    /// SIGTERM each daemon, newest first (the node leaves before control goes); SIGKILL those
    /// that do not exit within [`STOP_TIMEOUT`].
    fn shutdown(&mut self) -> Result<()> {
        let mut forced = Vec::new();
        while let Some(mut d) = self.running.pop() {
            match stop(&mut d.child) {
                Ok((status, true)) => println!("{} exited: {status}", d.name),
                Ok((status, false)) => {
                    println!(
                        "{} did not exit within {} s of SIGTERM; killed ({status})",
                        d.name,
                        STOP_TIMEOUT.as_secs()
                    );
                    forced.push(d.name);
                }
                Err(e) => println!("cannot stop {}: {e:#}", d.name),
            }
        }
        if !forced.is_empty() {
            bail!("had to SIGKILL: {}", forced.join(", "));
        }
        Ok(())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// SIGTERM, wait up to [`STOP_TIMEOUT`], else SIGKILL. Returns the exit status and whether the
/// child exited by itself.
fn stop(child: &mut Child) -> Result<(ExitStatus, bool)> {
    stop_within(child, STOP_TIMEOUT)
}

fn stop_within(child: &mut Child, timeout: Duration) -> Result<(ExitStatus, bool)> {
    if let Some(status) = child.try_wait()? {
        return Ok((status, true));
    }
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    kill(pid, Signal::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok((status, true));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    Ok((child.wait()?, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(runtime: Runtime) -> DemoConfig {
        DemoConfig {
            dir: PathBuf::from("/work/main/target/demo"),
            api_port: 40001,
            grpc_port: 40002,
            node_http_port: 40003,
            control_nodes_port: 40004,
            rtmp_port: 40005,
            live_api_port: 40006,
            operator: live::Key {
                id: "DEMOOPERATOR1".into(),
                secret: "op-secret".into(),
            },
            runtime,
            demo_app: PathBuf::from("/work/main/target/debug/cloudphone-demo-app"),
            store_url: None,
            replicas: Vec::new(),
        }
    }

    /// The keys of a TOML document, as dotted paths, sorted.
    fn keys(doc: &str) -> Vec<String> {
        fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(t) => walk(&path, t, out),
                    _ => out.push(path),
                }
            }
        }
        let mut out = Vec::new();
        walk("", &doc.parse::<toml::Table>().unwrap(), &mut out);
        out.sort();
        out
    }

    fn example(name: &str) -> String {
        std::fs::read_to_string(util::repo_root().join("deploy/config").join(name)).unwrap()
    }

    /// Example keys the demo leaves at their defaults: it serves plain HTTP and `ws://` (no
    /// certificates), and runs outside systemd, so its sealing key is a file in its own dir; login
    /// throttling, tenant quotas, the Android wipe snapshot and InstallApp's download policy keep
    /// their defaults, and so does the instance sandbox.
    const DEMO_DEFAULTS: &[&str] = &[
        "iam.argon2_concurrency",
        "iam.login_queue_timeout_ms",
        "iam.login_free_failures",
        "iam.login_backoff_base_ms",
        "iam.login_backoff_max_ms",
        "iam.login_forget_ms",
        "quotas.instances_per_tenant",
        "quotas.concurrent_commands_per_tenant",
        "quotas.instances_per_node_per_tenant",
        "android.clean_snapshot",
        "apps.allow_cidrs",
        "apps.allow_hosts",
        "apps.download_timeout_secs",
        "apps.max_concurrent_downloads",
        "http.tls_cert",
        "http.tls_key",
        "usage.secrets_key_credential",
        "webrtc.tls_cert",
        "webrtc.tls_key",
        // The demo's instances run with the default sandbox (own uids, SKU-sized cgroups).
        "sandbox.uid_base",
        "sandbox.uid_count",
        "sandbox.tmp_size_mib",
        "sandbox.pids_max",
        "sandbox.memory_max_mib",
        "sandbox.cpu_max_millis",
        "sandbox.file_size_max_mib",
        "sandbox.data_max_mib",
        "sandbox.hidden_paths",
    ];

    /// Keys the demo sets that the examples leave commented out (off unless an operator turns
    /// them on): the live API listener and its operator key.
    const DEMO_EXTRAS: &[&str] = &[
        "live_api.listen",
        "live_api.operator_access_key_id",
        "live_api.operator_access_key_secret",
    ];

    /// Keys the demo node sets that the example leaves out: its instances run the demo app.
    const NODE_EXTRAS: &[&str] = &["x11.launcher", "sandbox.ro_binds.cloudphone-demo-app"];

    fn demo_keys(doc: &str) -> Vec<String> {
        let mut keys = keys(doc);
        keys.retain(|k| !DEMO_EXTRAS.contains(&k.as_str()));
        keys
    }

    fn example_keys(name: &str) -> Vec<String> {
        let mut keys = keys(&example(name));
        keys.retain(|k| !DEMO_DEFAULTS.contains(&k.as_str()));
        keys
    }

    #[test]
    fn demo_configs_have_exactly_the_example_keys() {
        let c = config(Runtime::X11 { first_display: 100 });
        assert_eq!(demo_keys(&c.control_toml()), example_keys("control.toml"));
        let control: toml::Table = c.control_toml().parse().unwrap();
        for extra in DEMO_EXTRAS {
            let (table, key) = extra.split_once('.').unwrap();
            assert!(control[table].get(key).is_some(), "{extra}");
        }
        let mut node_keys = keys(&c.node_toml("t"));
        node_keys.retain(|k| !NODE_EXTRAS.contains(&k.as_str()));
        assert_eq!(node_keys, example_keys("node.toml"));
    }

    #[test]
    fn demo_configs_point_at_the_demo_dir_and_ports() {
        let c = config(Runtime::Synthetic { why: "test".into() });
        let control: toml::Table = c.control_toml().parse().unwrap();
        assert_eq!(control["listen"].as_str(), Some("127.0.0.1:40001"));
        assert_eq!(control["nodes"]["listen"].as_str(), Some("127.0.0.1:40004"));
        assert_eq!(
            control["live_api"]["listen"].as_str(),
            Some("127.0.0.1:40006")
        );
        assert_eq!(
            control["live_api"]["operator_access_key_secret"].as_str(),
            Some("op-secret")
        );
        assert_eq!(
            control["store"]["url"].as_str(),
            Some("sqlite:///work/main/target/demo/control.db?mode=rwc")
        );
        assert_eq!(
            control["nodes"]["heartbeat_timeout_ms"].as_integer(),
            Some(3000)
        );
        assert_eq!(
            control["nodes"]["ca_dir"].as_str(),
            Some("/work/main/target/demo/pki")
        );

        let node: toml::Table = c.node_toml("tok\"en").parse().unwrap();
        assert_eq!(node["runtime"].as_str(), Some("synthetic"));
        assert_eq!(
            node["state_dir"].as_str(),
            Some("/work/main/target/demo/node-state")
        );
        let tables = [
            ("grpc", "advertise", "https://127.0.0.1:40002"),
            ("http", "public_url", "ws://127.0.0.1:40003"),
            ("control", "endpoint", "https://127.0.0.1:40004"),
            ("control", "join_token", "tok\"en"),
        ];
        for (table, key, want) in tables {
            assert_eq!(node[table][key].as_str(), Some(want), "[{table}] {key}");
        }
        assert_eq!(
            node["x11"]["launcher"].as_str(),
            Some("exec /run/cloudphone/bin/cloudphone-demo-app")
        );
        assert_eq!(
            node["sandbox"]["ro_binds"]["cloudphone-demo-app"].as_str(),
            Some("/work/main/target/debug/cloudphone-demo-app")
        );
    }

    #[test]
    fn example_configs_comment_every_key() {
        for name in ["control.toml", "node.toml"] {
            let text = example(name);
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let is_key = line.contains('=') && !line.trim_start().starts_with('#');
                if is_key {
                    let commented =
                        line.contains('#') || (i > 0 && lines[i - 1].trim_start().starts_with('#'));
                    assert!(commented, "{name}:{}: `{line}` has no comment", i + 1);
                }
            }
        }
    }

    #[test]
    fn up_nodes_are_counted_in_any_envelope() {
        let up = json!({"node_id": "a", "status": "up"});
        let down = json!({"node_id": "b", "status": "down"});
        assert_eq!(count_up_nodes(&json!([up, down])), 1);
        assert_eq!(count_up_nodes(&json!({"nodes": [up, up]})), 2);
        assert_eq!(count_up_nodes(&json!({"data": {"nodes": [down]}})), 0);
        assert_eq!(count_up_nodes(&json!({"nodes": []})), 0);
    }

    #[test]
    fn sku_comes_from_either_shape() {
        let short = json!({"data": {"skus": [{"sku_id": "kp.a"}, {"sku_id": "kp.b"}]}});
        assert_eq!(sku_from(&short).as_deref(), Some("kp.a"));
        let documented = json!({"data": {"skuSpecResponseList": [
            {"regionId": "cn-east-1", "skuResponses": [{"cbcSkuId": "kp.east"}]},
            {"regionId": REGION, "skuResponses": [{"cbcSkuId": "kp.north"}]}
        ]}});
        assert_eq!(sku_from(&documented).as_deref(), Some("kp.north"));
        assert_eq!(sku_from(&json!({"data": {}})), None);
    }

    #[test]
    fn instance_ids_come_from_the_create_answer() {
        let body = json!({"data": {"orderId": "o1", "instanceInfos": [
            {"instanceId": "i1", "instanceName": "demo-1"},
            {"instanceId": "i2", "instanceName": "demo-2"}
        ]}, "error_code": "0", "error_msg": "OK"});
        assert_eq!(instance_ids_from(&body).unwrap(), ["i1", "i2"]);
        assert_eq!(
            instance_ids_from(&json!({"data": {"instanceInfos": []}})),
            None
        );
    }

    #[test]
    fn request_bodies_match_the_api() {
        let iam = iam_body("pw");
        assert_eq!(
            iam["auth"]["identity"]["password"]["user"]["domain"]["name"],
            DOMAIN
        );
        assert_eq!(iam["auth"]["scope"]["project"]["name"], REGION);
        let create = create_body("kp.x");
        assert_eq!(create["instanceSkuld"], "kp.x");
        assert_eq!(create["count"], 3);
        assert_eq!(create["chargeParam"]["isAutoRenew"], 0);
    }

    #[test]
    fn a_child_that_exits_on_sigterm_is_not_killed() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let start = Instant::now();
        let (status, by_itself) = stop(&mut child).unwrap();
        assert!(by_itself);
        assert!(!status.success());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn demo_flags_parse_in_any_order() {
        let parse = |flags: &[&str]| Options::parse(flags);
        let options = |no_wait, replicas| Some(Options { no_wait, replicas });
        assert_eq!(parse(&[]), options(false, 1));
        assert_eq!(parse(&["--no-wait"]), options(true, 1));
        assert_eq!(parse(&["--replicas", "3"]), options(false, 3));
        assert_eq!(parse(&["--replicas=2", "--no-wait"]), options(true, 2));
        assert_eq!(parse(&["--no-wait", "--replicas", "2"]), options(true, 2));
        for bad in [
            &["--replicas"][..],
            &["--replicas", "0"],
            &["--replicas", "x"],
            &["--replicas", "17"],
            &["--replicas=-1"],
            &["--wait"],
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replicas_share_the_postgres_store_on_ports_of_their_own() {
        let single = config(Runtime::Synthetic { why: "t".into() });
        // The default: one control on SQLite, one API URL.
        assert_eq!(single.api_urls(), ["http://127.0.0.1:40001"]);
        assert!(single.control_toml().contains("url = \"sqlite://"));

        let url = "postgres://postgres@127.0.0.1:5999/cloudphone_demo";
        let config = DemoConfig {
            store_url: Some(url.into()),
            replicas: vec![
                ReplicaPorts {
                    api: 41001,
                    nodes: 41002,
                    live_api: 41003,
                },
                ReplicaPorts {
                    api: 42001,
                    nodes: 42002,
                    live_api: 42003,
                },
            ],
            ..single
        };
        assert_eq!(
            config.api_urls(),
            [
                "http://127.0.0.1:40001",
                "http://127.0.0.1:41001",
                "http://127.0.0.1:42001"
            ]
        );
        let tomls = [
            config.control_toml(),
            config.replica_toml(0),
            config.replica_toml(1),
        ];
        let mut ports = Vec::new();
        for (text, api) in tomls.iter().zip(config.api_urls()) {
            let doc: toml::Table = text.parse().unwrap();
            assert_eq!(doc["store"]["url"].as_str(), Some(url), "{text}");
            assert_eq!(doc["public_url"].as_str(), Some(api.as_str()), "{text}");
            for listen in [
                &doc["listen"],
                &doc["nodes"]["listen"],
                &doc["live_api"]["listen"],
            ] {
                ports.push(listen.as_str().unwrap().to_owned());
            }
            // One CA for all: a node enrolled by one replica is trusted by every one.
            assert_eq!(
                doc["nodes"]["ca_dir"].as_str(),
                Some("/work/main/target/demo/pki")
            );
        }
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        // Every replica's config has exactly the keys of the example config.
        for text in &tomls {
            assert_eq!(demo_keys(text), example_keys("control.toml"));
        }
    }
}
