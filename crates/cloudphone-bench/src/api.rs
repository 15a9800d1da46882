//! The tenant API under load: `wrk` against ListInstances and GetDeviceToken of a throwaway
//! deployment (control + one synthetic node), first on SQLite, then on PostgreSQL.
//!
//! Each endpoint gets a generated Lua script that sends what the console player sends
//! (`X-Auth-Token`, a fresh `x-request-id` per request, `content-type: application/json`, the
//! `{}` body of GetDeviceToken), counts answers that are not 2xx and 2xx answers whose body is
//! not `"error_code":"0"` (some of the spec's errors are HTTP 200), and prints one JSON line
//! from its `done()` hook with wrk's own totals and latency percentiles. [`parse_wrk_output`]
//! reads that line; it is pure and tested on a captured run.
//!
//! wrk is closed-loop: a connection sends its next request when the answer arrives, so a slow
//! server is offered less load and its slowness hides (coordinated omission). The script makes
//! it open-loop at a fixed offered rate instead: each wrk thread owns an even share of the rate
//! and a schedule of send slots on the monotonic clock (LuaJIT's `ffi` → `clock_gettime`), and
//! its `delay()` hook holds each connection until the next unclaimed slot. A request sent on
//! its slot measures its whole latency; one whose slot had already passed when a connection
//! came free (every connection of the thread busy) is sent at once and counted as a *late
//! start* with its lag, so a run either shows no late starts (its percentiles are free of
//! coordinated omission) or says by how much they may understate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Marks the line the Lua `done()` hook prints.
const MARKER: &str = "CLOUDPHONE_WRK ";

/// How wrk is run, the same for every cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WrkSettings {
    pub threads: u32,
    pub connections: u32,
    pub duration_s: u32,
    /// An unmeasured run of this length before each measured one (0: none).
    pub warmup_s: u32,
    /// wrk's per-request timeout; a request slower than this counts as a timeout error.
    pub timeout_s: u32,
    /// Requests per second offered by all connections together, paced by the script's
    /// `delay()` (0: closed loop, as fast as answers come).
    #[serde(default)]
    pub rate_per_s: u32,
}

/// The offered rate of the Done-when target: 1,000 req/s per endpoint.
pub const TARGET_RATE: u32 = 1_000;

impl WrkSettings {
    pub fn new(smoke: bool) -> Self {
        Self {
            threads: 2,
            // 32 open connections for 1,000 req/s: a slot is missed only when 16 requests of a
            // thread are outstanding at once, i.e. when the server is ~30 ms behind.
            connections: 32,
            duration_s: if smoke { 1 } else { 20 },
            warmup_s: if smoke { 0 } else { 3 },
            timeout_s: 10,
            // A smoke run (debug daemons, 1 s) checks that the pacing works, not the target.
            rate_per_s: if smoke { 200 } else { TARGET_RATE },
        }
    }

    /// Milliseconds between the send slots of one wrk thread (0 when closed loop).
    pub fn slot_interval_ms(&self) -> f64 {
        if self.rate_per_s == 0 {
            0.0
        } else {
            1000.0 * f64::from(self.threads.max(1)) / f64::from(self.rate_per_s)
        }
    }
}

/// One endpoint as a client calls it. Requests cycle through `paths`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub method: String,
    pub paths: Vec<String>,
    pub body: Option<String>,
}

impl Endpoint {
    /// ListInstances as the console lists a tenant's phones.
    pub fn list_instances() -> Self {
        Self {
            name: "ListInstances".into(),
            method: "GET".into(),
            paths: vec!["/v1/instances/batch-query?page_no=1&page_size=100".into()],
            body: None,
        }
    }

    /// GetDeviceToken for each instance in turn, as the player asks before it streams one.
    pub fn device_token(instance_ids: &[String]) -> Self {
        Self {
            name: "GetDeviceToken".into(),
            method: "POST".into(),
            paths: instance_ids
                .iter()
                .map(|id| format!("/v1/instances/{id}/auth"))
                .collect(),
            body: Some("{}".into()),
        }
    }

    /// `METHOD path` for the report (the first path, `{id}` when they differ by instance).
    pub fn describe(&self) -> String {
        let path = if self.paths.len() > 1 {
            "/v1/instances/{instance_id}/auth".to_owned()
        } else {
            self.paths.first().cloned().unwrap_or_default()
        };
        match &self.body {
            Some(body) => format!("{} {path} `{body}`", self.method),
            None => format!("{} {path}", self.method),
        }
    }
}

/// A Lua string literal holding `s`.
fn lua_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// The wrk script for `endpoint` called with `token`, paced to `settings.rate_per_s`; with
/// `targets` (`host:port` of each control replica), wrk thread *i* connects to target
/// *i mod n*, so the load is spread evenly over the replicas (wrk's URL only names the first).
pub fn lua_script(
    endpoint: &Endpoint,
    token: &str,
    settings: &WrkSettings,
    targets: &[String],
) -> String {
    let paths = endpoint
        .paths
        .iter()
        .map(|p| lua_quote(p))
        .collect::<Vec<_>>()
        .join(", ");
    let body = endpoint.body.as_deref().map_or("nil".into(), lua_quote);
    let targets = targets
        .iter()
        .filter_map(|t| t.rsplit_once(':'))
        .map(|(host, port)| format!("{{ {}, {} }}", lua_quote(host), lua_quote(port)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"-- Generated by cloudphone-bench (api.rs) for {name}.
local paths = {{ {paths} }}
local method = {method}
local body = {body}
local token = {token}
local targets = {{ {targets} }}
-- Milliseconds between this thread's send slots (0: closed loop), and wrk's threads (`threads`
-- below is filled in the setup state only: each thread's own state sees it empty).
local interval_ms = {interval_ms}
local nthreads = {nthreads}
local threads = {{}}
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} cloudphone_timespec;
int clock_gettime(int clock, cloudphone_timespec *ts);
]]
local ts = ffi.new("cloudphone_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
-- Per thread (each thread has its own Lua state): id, requests sent, the counters, the next
-- send slot, and the late starts with their summed and largest lag (ms).
tid = 0
sent = 0
non2xx = 0
api_errors = 0
next_slot = nil
late = 0
lag_sum_ms = 0
lag_max_ms = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
  if #targets > 0 then
    local t = targets[((#threads - 1) % #targets) + 1]
    thread.addr = wrk.lookup(t[1], t[2])[1]
  end
end

function delay()
  if interval_ms <= 0 then
    return 0
  end
  local now = now_ms()
  if next_slot == nil then
    -- Threads start half a slot apart so their slots interleave.
    next_slot = now + interval_ms * (tid - 1) / nthreads
  end
  local wait = next_slot - now
  next_slot = next_slot + interval_ms
  if wait < 0 then
    -- Every connection of this thread was busy at the slot: the request goes out late.
    late = late + 1
    lag_sum_ms = lag_sum_ms - wait
    if -wait > lag_max_ms then
      lag_max_ms = -wait
    end
    return 0
  end
  return math.floor(wait + 0.5)
end

function request()
  sent = sent + 1
  local headers = {{}}
  headers["X-Auth-Token"] = token
  headers["x-request-id"] = "wrk-" .. tid .. "-" .. sent
  headers["content-type"] = "application/json"
  return wrk.format(method, paths[(sent % #paths) + 1], headers, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif not string.find(body, '"error_code":"0"', 1, true) then
    api_errors = api_errors + 1
  end
end

function done(summary, latency, requests)
  local n, a, l, lsum, lmax = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    n = n + t:get("non2xx")
    a = a + t:get("api_errors")
    l = l + t:get("late")
    lsum = lsum + t:get("lag_sum_ms")
    lmax = math.max(lmax, t:get("lag_max_ms"))
  end
  local e = summary.errors
  io.write(string.format(
    '{marker}{{"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"errors":{{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f}},' ..
    '"non2xx":%.0f,"api_errors":%.0f,"late":%.0f,"lag_sum_ms":%.3f,"lag_max_ms":%.3f,' ..
    '"latency_us":{{"min":%.0f,"mean":%.1f,"stdev":%.1f,"max":%.0f,' ..
    '"p50":%.0f,"p75":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f}}}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, n, a, l, lsum, lmax,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"#,
        name = endpoint.name,
        method = lua_quote(&endpoint.method),
        token = lua_quote(token),
        interval_ms = settings.slot_interval_ms(),
        nthreads = settings.threads.max(1),
        marker = MARKER,
    )
}

/// wrk's socket-level errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl SocketErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// Request latency as wrk measured it (send → whole response), ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub stdev: f64,
}

/// One measured wrk run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrkRun {
    pub requests: u64,
    pub duration_s: f64,
    pub requests_per_sec: f64,
    pub bytes: u64,
    pub latency_ms: LatencyMs,
    /// Answers with a status outside 200..=299 (the script's count; wrk's own "Non-2xx or 3xx
    /// responses" line, when larger, wins).
    pub non_2xx: u64,
    /// 2xx answers whose body is not `"error_code":"0"`.
    pub api_errors: u64,
    pub socket_errors: SocketErrors,
    /// Requests sent after their slot of the fixed-rate schedule (every connection of the
    /// thread was busy at it), their summed lag and the largest; 0 in a closed-loop run.
    #[serde(default)]
    pub late_starts: u64,
    #[serde(default)]
    pub lag_sum_ms: f64,
    #[serde(default)]
    pub lag_max_ms: f64,
}

impl WrkRun {
    /// Why this run does not count as a clean one, if it does not.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.requests == 0 {
            out.push("no requests completed".into());
        }
        if self.non_2xx > 0 {
            out.push(format!("{} non-2xx answers", self.non_2xx));
        }
        if self.api_errors > 0 {
            out.push(format!("{} answers with an error_code", self.api_errors));
        }
        if self.socket_errors.total() > 0 {
            out.push(format!("socket errors {:?}", self.socket_errors));
        }
        out
    }
}

/// Reads what wrk printed with [`lua_script`]'s `done()` hook (its `--latency` text around it
/// is ignored except for the "Non-2xx or 3xx responses" line).
pub fn parse_wrk_output(stdout: &str) -> Result<WrkRun> {
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(MARKER))
        .context("wrk printed no result line (was the script's done() run?)")?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("wrk result: {line}"))?;
    let num = |path: &[&str]| -> Result<f64> {
        let mut at = &v;
        for key in path {
            at = &at[*key];
        }
        at.as_f64()
            .with_context(|| format!("wrk result has no {}: {line}", path.join(".")))
    };
    let count = |path: &[&str]| num(path).map(|x| x.max(0.0) as u64);
    let ms = |key: &str| num(&["latency_us", key]).map(|us| us / 1e3);
    let text_non_2xx = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let requests = count(&["requests"])?;
    let duration_s = num(&["duration_us"])? / 1e6;
    Ok(WrkRun {
        requests,
        duration_s,
        requests_per_sec: if duration_s > 0.0 {
            requests as f64 / duration_s
        } else {
            0.0
        },
        bytes: count(&["bytes"])?,
        latency_ms: LatencyMs {
            p50: ms("p50")?,
            p75: ms("p75")?,
            p90: ms("p90")?,
            p99: ms("p99")?,
            p999: ms("p999")?,
            max: ms("max")?,
            mean: ms("mean")?,
            stdev: ms("stdev")?,
        },
        non_2xx: count(&["non2xx"])?
            .max(count(&["errors", "status"])?)
            .max(text_non_2xx),
        api_errors: count(&["api_errors"])?,
        socket_errors: SocketErrors {
            connect: count(&["errors", "connect"])?,
            read: count(&["errors", "read"])?,
            write: count(&["errors", "write"])?,
            timeout: count(&["errors", "timeout"])?,
        },
        // A closed-loop script (or an older one) prints no pacing figures.
        late_starts: count(&["late"]).unwrap_or(0),
        lag_sum_ms: num(&["lag_sum_ms"]).unwrap_or(0.0),
        lag_max_ms: num(&["lag_max_ms"]).unwrap_or(0.0),
    })
}

/// The store a deployment runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// What one row group of the bench measures: a store and the control processes serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub backend: Backend,
    /// Control processes on the one store, wrk's threads spread over them (SQLite: 1).
    pub replicas: u32,
}

impl Deployment {
    /// SQLite, one control (the embedded default); PostgreSQL with 2 replicas beside it.
    pub const MEASURED: [Deployment; 2] = [
        Deployment {
            backend: Backend::Sqlite,
            replicas: 1,
        },
        Deployment {
            backend: Backend::Postgres,
            replicas: 2,
        },
    ];

    /// `SQLite` / `PostgreSQL, 2 replicas`.
    pub fn label(self) -> String {
        match self.replicas {
            0 | 1 => self.backend.label().to_owned(),
            n => format!("{}, {n} replicas", self.backend.label()),
        }
    }
}

fn one() -> u32 {
    1
}

/// CPU used during a measured run, % of one core, per process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSplit {
    pub control: f64,
    pub node: f64,
    pub wrk: f64,
    /// Every control replica together. The PostgreSQL server's processes (postmaster and its
    /// children); 0 on SQLite.
    #[serde(default)]
    pub postgres: f64,
}

/// One backend × endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiCell {
    pub backend: Backend,
    /// Control processes serving the store; requests spread evenly over them.
    #[serde(default = "one")]
    pub replicas: u32,
    /// The offered rate, req/s (0: closed loop).
    #[serde(default)]
    pub rate_per_s: u32,
    pub endpoint: String,
    /// What each request is, e.g. `GET /v1/instances/batch-query?page_no=1&page_size=100`.
    pub request: String,
    pub wrk: WrkRun,
    pub cpu_percent: CpuSplit,
    /// Resident memory of the daemons before and after the warm-up + measured run, KiB.
    pub control_rss_kib: (u64, u64),
    pub node_rss_kib: (u64, u64),
    /// The machine's 1-minute load average just before the measured run: other work on the
    /// machine (builds, tests) competes with wrk and the daemons.
    #[serde(default)]
    pub loadavg_1m: f64,
}

/// A backend that was not measured, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub backend: Backend,
    #[serde(default = "one")]
    pub replicas: u32,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiResults {
    pub(crate) settings: WrkSettings,
    /// `debug` or `release`: how the control and node binaries under test were built.
    pub(crate) daemon_profile: String,
    /// The machine's cores, shared by wrk, control, node (and PostgreSQL).
    pub(crate) cores: usize,
    pub(crate) wrk_version: String,
    /// Instances the tenant has, so ListInstances returns this many rows and GetDeviceToken
    /// cycles through them.
    pub(crate) instances: u32,
    /// PostgreSQL's version and durability settings as the server reported them.
    pub(crate) postgres: Option<String>,
    pub cells: Vec<ApiCell>,
    pub(crate) skipped: Vec<Skipped>,
    pub failures: Vec<String>,
}

/// The tenant's phones in the deployment.
const INSTANCES: u32 = 10;
const DOMAIN: &str = "acme";
const PASSWORD: &str = "correct-horse-1";

/// The daemons the API bench measures: `CLOUDPHONE_BENCH_API=debug` or `release`; unset,
/// release ones (the Done-when target is for release builds), except in a smoke run, which only
/// checks that everything works and takes [`daemon_profile`].
pub fn api_profile(smoke: bool) -> &'static str {
    match std::env::var("CLOUDPHONE_BENCH_API").as_deref() {
        Ok("release") => "release",
        Ok("debug") => "debug",
        _ if smoke => daemon_profile(),
        _ => "release",
    }
}

/// `release` when `cargo xtask bench --release` runs us (then the daemons are release builds
/// too), else `debug`.
pub fn daemon_profile() -> &'static str {
    if std::env::var("CLOUDPHONE_BENCH_PROFILE").as_deref() == Ok("release") {
        "release"
    } else {
        "debug"
    }
}

/// The daemon binary of `profile`: testkit's debug build, or `target/release` (built here unless
/// a runner already did, as for the debug ones).
pub(crate) fn daemon_binary(name: &str, profile: &str) -> Result<PathBuf> {
    if profile != "release" {
        return Ok(cloudphone_testkit::process::binary(name));
    }
    static BUILT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let built = *BUILT.get_or_init(|| {
        std::env::var_os("CLOUDPHONE_TEST_PREBUILT").is_some()
            || std::process::Command::new(env!("CARGO"))
                .current_dir(cloudphone_testkit::process::workspace_root())
                .args(["build", "--quiet", "--release", "--bins"])
                .args(["-p", "cloudphone-control", "-p", "cloudphone-node"])
                .status()
                .is_ok_and(|s| s.success())
    });
    if !built {
        bail!("building the release daemons failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cloudphone_testkit::process::workspace_root().join("target"));
    Ok(target.join("release").join(name))
}

fn wrk_version() -> Result<String> {
    let out = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .context(
            "cannot run wrk: install it (`cargo xtask install-deps --test`, Debian package `wrk`)",
        )?;
    // wrk prints its version and usage, and exits 1.
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok(text
        .lines()
        .next()
        .unwrap_or("wrk")
        .split(" Copyright")
        .next()
        .unwrap_or("wrk")
        .trim()
        .to_owned())
}

/// Measures every backend in turn; one that cannot run is skipped or recorded as a failure,
/// never stopping the others.
pub async fn run(smoke: bool, deployments: &[Deployment]) -> Result<ApiResults> {
    let settings = WrkSettings::new(smoke);
    let profile = api_profile(smoke);
    let mut results = ApiResults {
        settings: settings.clone(),
        daemon_profile: profile.into(),
        cores: crate::stats::cores(),
        wrk_version: wrk_version()?,
        instances: INSTANCES,
        postgres: None,
        cells: Vec::new(),
        skipped: Vec::new(),
        failures: Vec::new(),
    };
    for &deployment in deployments {
        let backend = deployment.backend;
        let store_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => match postgres_database() {
                Ok(url) => {
                    results.postgres = Some(postgres_description(&url));
                    Some(url)
                }
                Err(why) => {
                    println!("api: {}: skipped: {why}", deployment.label());
                    results.skipped.push(Skipped {
                        backend,
                        replicas: deployment.replicas,
                        why,
                    });
                    continue;
                }
            },
        };
        let settings = settings.clone();
        // A panic in the deployment helpers (a daemon that never comes up) fails this backend
        // only.
        match tokio::spawn(measure_backend(deployment, store_url, settings, profile)).await {
            Ok(Ok(cells)) => {
                for c in &cells {
                    let achieved = c.wrk.requests_per_sec;
                    let offered = f64::from(c.rate_per_s);
                    // wrk's duration runs past its last slots by up to ~0.2 s: a 1 s smoke run
                    // understates the rate it held, so only a measured run is judged.
                    if !smoke && offered > 0.0 && achieved < 0.95 * offered {
                        results.failures.push(format!(
                            "{} {}: achieved {achieved:.0} req/s of the {offered:.0} offered",
                            deployment.label(),
                            c.endpoint
                        ));
                    }
                    for p in c.wrk.problems() {
                        results.failures.push(format!(
                            "{} {}: {p}",
                            deployment.label(),
                            c.endpoint
                        ));
                    }
                }
                results.cells.extend(cells);
            }
            Ok(Err(e)) => results
                .failures
                .push(format!("{}: {e:#}", deployment.label())),
            Err(e) => results
                .failures
                .push(format!("{}: panicked: {e}", deployment.label())),
        }
    }
    Ok(results)
}

/// A fresh database on the suite's PostgreSQL (`CLOUDPHONE_TEST_PG_URL`, as `cargo xtask
/// bench` and `test` provide), else on a cluster testkit starts; `Err(why)` when neither is
/// possible.
fn postgres_database() -> Result<String, String> {
    let have_url = std::env::var_os("CLOUDPHONE_TEST_PG_URL").is_some();
    if !have_url && !std::path::Path::new("/usr/lib/postgresql/15/bin/initdb").exists() {
        return Err(
            "no PostgreSQL (CLOUDPHONE_TEST_PG_URL unset and no server binaries \
                    under /usr/lib/postgresql/15/bin)"
                .into(),
        );
    }
    std::panic::catch_unwind(cloudphone_testkit::postgres::fresh_database).map_err(|e| {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
        format!("no PostgreSQL reachable: {why}")
    })
}

fn postgres_description(url: &str) -> String {
    let query = "select split_part(version(), ' on ', 1) || ', fsync=' || \
                 current_setting('fsync') || ', synchronous_commit=' || \
                 current_setting('synchronous_commit') || ', shared_buffers=' || \
                 current_setting('shared_buffers')";
    std::process::Command::new("psql")
        .args([url, "-tAc", query])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Control + one synthetic node (capacity above [`INSTANCES`]) on `store_url`, the tenant
/// logged in and owning [`INSTANCES`] running phones; then wrk per endpoint.
async fn measure_backend(
    deployment: Deployment,
    store_url: Option<String>,
    settings: WrkSettings,
    profile: &'static str,
) -> Result<Vec<ApiCell>> {
    use cloudphone_testkit::fleet::{Fleet, order_sku, path_str};

    let control_bin = daemon_binary("cloudphone-control", profile)?;
    let node_bin = daemon_binary("cloudphone-node", profile)?;
    let mut fleet = Fleet::new(store_url, "synthetic");
    let config = fleet.write_control_config();
    let out = std::process::Command::new(&control_bin)
        .args(["tenant", "create", "--config", path_str(&config)])
        .args([
            "--domain",
            DOMAIN,
            "--user",
            "dev",
            "--project",
            "cn-north-7",
        ])
        .env("CLOUDPHONE_TENANT_PASSWORD", PASSWORD)
        .output()
        .context("tenant create")?;
    if !out.status.success() {
        bail!("tenant create: {}", String::from_utf8_lossy(&out.stderr));
    }
    fleet.spawn_control(&control_bin);
    fleet.wait_healthy(&fleet.api.clone()).await;
    fleet.node_capacity = INSTANCES + 4;
    fleet.spawn_node(&node_bin);
    fleet.wait_node("up", Duration::from_secs(30)).await;
    let backend = deployment.backend;
    // The further replicas start once the node is up, so each finds it in the store's registry.
    let mut replicas = Vec::new();
    for i in 2..=deployment.replicas {
        replicas.push(
            fleet
                .add_control_with(&format!("control-{i}"), &control_bin)
                .await,
        );
    }

    let token = fleet.login(DOMAIN, PASSWORD).await;
    let (status, body) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/instances/create",
            &token,
            Some(&order_sku("kp.synthetic.720p", INSTANCES)),
        )
        .await;
    if status != 200 || body["error_code"] != "0" {
        bail!("CreateInstance: HTTP {status}: {body}");
    }
    let ids: Vec<String> = body["data"]["instanceInfos"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["instanceId"].as_str().map(str::to_owned))
        .collect();
    fleet
        .wait_running_status(&token, 2, INSTANCES as usize, Duration::from_secs(60))
        .await;

    let control_pid = fleet.control.as_ref().map_or(-1, |d| d.pid());
    let replica_pids: Vec<i32> = replicas.iter().map(|r| r.daemon.pid()).collect();
    // wrk's threads, one per replica in turn; the URL names the first.
    let targets: Vec<String> = std::iter::once(fleet.api.as_str())
        .chain(replicas.iter().map(|r| r.api.as_str()))
        .filter_map(|api| api.strip_prefix("http://"))
        .map(str::to_owned)
        .collect();
    if settings.threads < deployment.replicas {
        bail!(
            "{} wrk threads cannot spread over {} replicas",
            settings.threads,
            deployment.replicas
        );
    }
    let node_pid = fleet.node.as_ref().map_or(-1, |d| d.pid());
    let pg_port = fleet
        .store_url
        .starts_with("postgres")
        .then(|| url_port(&fleet.store_url))
        .flatten();
    let mut cells = Vec::new();
    for endpoint in [Endpoint::list_instances(), Endpoint::device_token(&ids)] {
        // One call by hand first, on every replica: the endpoint answers as a client expects.
        for api in std::iter::once(&fleet.api).chain(replicas.iter().map(|r| &r.api)) {
            check_once(&fleet, api, &endpoint, &token).await?;
        }
        let script = fleet.path(&format!("{}.lua", endpoint.name));
        let spread = if replicas.is_empty() {
            &[][..]
        } else {
            &targets[..]
        };
        std::fs::write(&script, lua_script(&endpoint, &token, &settings, spread))?;
        let rss_before = (rss_kib(control_pid), rss_kib(node_pid));
        if settings.warmup_s > 0 {
            wrk(&fleet.api, &script, &settings, settings.warmup_s).await?;
        }
        let loadavg_1m = loadavg_1m();
        let cpu = || {
            [
                cpu_seconds(control_pid)
                    + replica_pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>(),
                cpu_seconds(node_pid),
                children_cpu(),
                pg_port.map_or(0.0, postgres_cpu_seconds),
            ]
        };
        let before = cpu();
        let wall = std::time::Instant::now();
        let run = wrk(&fleet.api, &script, &settings, settings.duration_s).await?;
        let after = cpu();
        let wall = wall.elapsed().as_secs_f64();
        let pct = |i: usize| 100.0 * (after[i] - before[i]) / wall;
        let cpu = CpuSplit {
            control: pct(0),
            node: pct(1),
            wrk: pct(2),
            postgres: pct(3),
        };
        println!(
            "api: {} {}: {:.0} req/s (offered {}), late starts {} (max lag {:.1} ms), p50 {:.2} \
             ms, p99 {:.2} ms, max {:.2} ms, {} requests, non-2xx {}, error_code {}, socket \
             errors {}; CPU % control {:.0} node {:.0} wrk {:.0} postgres {:.0}; load average \
             {loadavg_1m:.2}",
            deployment.label(),
            endpoint.name,
            run.requests_per_sec,
            settings.rate_per_s,
            run.late_starts,
            run.lag_max_ms,
            run.latency_ms.p50,
            run.latency_ms.p99,
            run.latency_ms.max,
            run.requests,
            run.non_2xx,
            run.api_errors,
            run.socket_errors.total(),
            cpu.control,
            cpu.node,
            cpu.wrk,
            cpu.postgres
        );
        cells.push(ApiCell {
            backend,
            replicas: deployment.replicas.max(1),
            rate_per_s: settings.rate_per_s,
            request: endpoint.describe(),
            endpoint: endpoint.name.clone(),
            wrk: run,
            cpu_percent: cpu,
            control_rss_kib: (rss_before.0, rss_kib(control_pid)),
            node_rss_kib: (rss_before.1, rss_kib(node_pid)),
            loadavg_1m,
        });
    }
    drop(replicas);
    drop(fleet);
    Ok(cells)
}

/// One request with the script's headers; fails unless it is a 200 with `error_code` "0" (and,
/// for ListInstances, all the tenant's rows).
async fn check_once(
    fleet: &cloudphone_testkit::fleet::Fleet,
    api: &str,
    endpoint: &Endpoint,
    token: &str,
) -> Result<()> {
    let method = reqwest::Method::from_bytes(endpoint.method.as_bytes())?;
    let path = endpoint.paths.first().context("endpoint without a path")?;
    let mut request = fleet
        .http
        .request(method, format!("{api}{path}"))
        .header("X-Auth-Token", token)
        .header("x-request-id", "bench-api-check")
        .header("content-type", "application/json");
    if let Some(body) = &endpoint.body {
        request = request.body(body.clone());
    }
    let response = request.send().await.context(endpoint.name.clone())?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 || body["error_code"] != "0" {
        bail!("{}: HTTP {status}: {body}", endpoint.name);
    }
    if endpoint.name == "ListInstances" && body["data"]["total_count"] != INSTANCES {
        bail!("ListInstances: expected {INSTANCES} rows: {body}");
    }
    Ok(())
}

/// Runs wrk with `script` for `seconds` and parses what it printed.
async fn wrk(
    api: &str,
    script: &std::path::Path,
    settings: &WrkSettings,
    seconds: u32,
) -> Result<WrkRun> {
    let out = tokio::process::Command::new("wrk")
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{}", settings.connections))
        .arg(format!("-d{seconds}s"))
        .arg(format!("--timeout={}s", settings.timeout_s))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(api)
        .output()
        .await
        .context("cannot run wrk: install it (`cargo xtask install-deps --test`)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk_output(&stdout)
}

/// User + system CPU seconds of a process, all threads (`/proc/<pid>/stat`, USER_HZ = 100).
fn cpu_seconds(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// CPU seconds of this process's reaped children (wrk, once it exited).
fn children_cpu() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => f64::NAN,
    }
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The report's "API under load" section.
pub fn markdown(a: &ApiResults) -> String {
    use std::fmt::Write as _;
    let w = &a.settings;
    let mut s = String::new();
    let _ = writeln!(s, "## API under load\n");
    let _ = writeln!(
        s,
        "`{}` with {} threads × {} connections, {} s per cell after an unmeasured {} s warm-up, \
         `--timeout {}s`, at a **fixed offered rate of {} req/s** per cell (wrk is closed-loop; \
         the generated script makes it open-loop: each thread owns half the rate and a schedule \
         of send slots on the monotonic clock, and its `delay()` hook holds each connection \
         until the next slot). **Coordinated omission**: wrk times a request from when it is \
         sent, so a request held back because the server was slow would hide that wait; here a \
         request is sent on its slot unless every connection of its thread is still waiting for \
         an answer, and such *late starts* are counted with their lag (the *late* column): with \
         0 late starts every request was sent on schedule and the percentiles are the whole \
         latency a client arriving at that rate sees; with some, the lag (at most the max shown) \
         is what the percentiles may understate. *achieved* is answers per second. Target: a \
         throwaway deployment, control + one synthetic node, **{} builds** of both daemons{}; on \
         PostgreSQL **2 control replicas** on the one database, wrk's thread 1 on replica 1 and \
         thread 2 on replica 2 (so 500 req/s each), the tenant's token from the first; control \
         logging at \
         `RUST_LOG=info` to a file. **wrk shares the machine's {} cores with control, the node \
         (and PostgreSQL)**; nothing is pinned, so these are figures for this machine with the \
         load generator on it, not a dedicated host's capacity. The CPU column is each \
         process's user + system time over the measured run, % of one core (PostgreSQL: its \
         server process and all its children); the load average shows what else the machine \
         was doing just before. The tenant owns {} \
         running instances: ListInstances returns all of them on one page; GetDeviceToken cycles \
         through them, each call a store read and a StartSession gRPC call to the node. Every \
         request carries what the console player sends: `X-Auth-Token`, a fresh \
         `x-request-id`, `content-type: application/json`. An answer counts as an error when \
         its status is not 2xx, or when it is 2xx but its `error_code` is not \"0\". Control's \
         store pool: 4 connections on SQLite, 16 on PostgreSQL (per replica). The CPU of \
         control is every replica's together. Measured by `CLOUDPHONE_TEST_PREBUILT=1 cargo \
         bench --profile dev -p cloudphone-bench --bench api` after `cargo build --release -p \
         cloudphone-control -p cloudphone-node` and `cargo build -p cloudphone-control -p \
         cloudphone-node` (the admin CLI the deployment helpers run), or by `cargo xtask \
         bench`.\n",
        a.wrk_version,
        w.threads,
        w.connections,
        w.duration_s,
        w.warmup_s,
        w.timeout_s,
        w.rate_per_s,
        a.daemon_profile,
        if a.daemon_profile == "release" {
            ""
        } else {
            " (`CLOUDPHONE_BENCH_API=release`, the default outside a smoke run, runs release ones)"
        },
        a.cores,
        a.instances
    );
    let _ = writeln!(
        s,
        "| deployment | endpoint | request | req/s offered → achieved | late starts (max lag ms) | p50 / p90 / p99 / max ms | requests | non-2xx | error_code ≠ 0 | socket errors | CPU % control / node / PostgreSQL / wrk | RSS MiB control, node (before → after) | load avg before | threads × conns × s | daemons |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mib = |k: u64| k as f64 / 1024.0;
    for c in &a.cells {
        let r = &c.wrk;
        let l = &r.latency_ms;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} → {:.0} | {} ({:.1}) | {:.2} / {:.2} / {:.2} / {:.2} | {} | {} | {} | {} | {:.0} / {:.0} / {} / {:.0} | {:.0} → {:.0}, {:.0} → {:.0} | {:.2} | {} × {} × {} | {} |",
            cell_label(c),
            c.endpoint,
            c.request,
            if c.rate_per_s == 0 {
                "closed loop".to_owned()
            } else {
                c.rate_per_s.to_string()
            },
            r.requests_per_sec,
            r.late_starts,
            r.lag_max_ms,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            r.requests,
            r.non_2xx,
            r.api_errors,
            r.socket_errors.total(),
            c.cpu_percent.control,
            c.cpu_percent.node,
            match c.backend {
                Backend::Sqlite => "–".to_owned(),
                Backend::Postgres => format!("{:.0}", c.cpu_percent.postgres),
            },
            c.cpu_percent.wrk,
            mib(c.control_rss_kib.0),
            mib(c.control_rss_kib.1),
            mib(c.node_rss_kib.0),
            mib(c.node_rss_kib.1),
            c.loadavg_1m,
            w.threads,
            w.connections,
            w.duration_s,
            a.daemon_profile
        );
    }
    for c in a.cells.iter().filter(|c| c.endpoint == "GetDeviceToken") {
        let _ = writeln!(
            s,
            "\n{}: node RSS {:.1} → {:.1} MiB over the warm-up and {} measured GetDeviceToken \
             calls; each call registers a new device's grant with the node.",
            cell_label(c),
            mib(c.node_rss_kib.0),
            mib(c.node_rss_kib.1),
            c.wrk.requests
        );
    }
    if let Some(pg) = &a.postgres {
        let _ = writeln!(
            s,
            "\nPostgreSQL: a local throwaway cluster on the same machine ({pg})."
        );
    }
    for k in &a.skipped {
        let label = Deployment {
            backend: k.backend,
            replicas: k.replicas,
        }
        .label();
        let _ = writeln!(s, "\n- {label}: skipped: {}", k.why);
    }
    for f in &a.failures {
        let _ = writeln!(s, "\n- FAILED: {f}");
    }
    let _ = writeln!(s);
    s
}

fn cell_label(c: &ApiCell) -> String {
    Deployment {
        backend: c.backend,
        replicas: c.replicas,
    }
    .label()
}

fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The port of a `postgres://user@host:port/db` URL.
fn url_port(url: &str) -> Option<u16> {
    let authority = url.split_once("://")?.1.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// CPU seconds of the PostgreSQL server listening on `port`: its postmaster (found by the
/// `-p <port>` its command line carries, as both throwaway clusters start it) and every child
/// of it (the backends serving control's pool, the background workers).
fn postgres_cpu_seconds(port: u16) -> f64 {
    let Some(procs) = crate::procfs::processes() else {
        return f64::NAN;
    };
    let procs: Vec<(i32, i32, String)> = procs
        .iter()
        .map(|p| {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            (p.pid as i32, p.ppid as i32, cmdline)
        })
        .collect();
    let wanted = format!(" -p {port} ");
    let Some(postmaster) = procs
        .iter()
        .find(|(_, _, cmd)| cmd.contains("postgres") && cmd.contains(&wanted))
        .map(|p| p.0)
    else {
        return f64::NAN;
    };
    procs
        .iter()
        .filter(|(pid, ppid, _)| *pid == postmaster || *ppid == postmaster)
        .map(|(pid, _, _)| cpu_seconds(*pid))
        .filter(|c| c.is_finite())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What wrk 4.1 (Debian) printed for GetDeviceToken on PostgreSQL, smoke mode.
    const SAMPLE: &str = "Running 1s test @ http://127.0.0.1:37425
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    23.49ms   10.00ms  89.70ms   70.60%
    Req/Sec   338.35     69.66   460.00     70.00%
  Latency Distribution
     50%   22.94ms
     75%   29.08ms
     90%   34.51ms
     99%   63.33ms
  677 requests in 1.01s, 387.88KB read
Requests/sec:    673.01
Transfer/sec:    385.59KB
CLOUDPHONE_WRK {\"requests\":677,\"duration_us\":1005924,\"bytes\":397185,\"errors\":{\"connect\":0,\"read\":0,\"write\":0,\"status\":0,\"timeout\":0},\"non2xx\":0,\"api_errors\":0,\"latency_us\":{\"min\":5061,\"mean\":23490.5,\"stdev\":9998.8,\"max\":89704,\"p50\":22941,\"p75\":29082,\"p90\":34510,\"p99\":63327,\"p999\":89704}}
";

    #[test]
    fn parses_a_captured_run() {
        let r = parse_wrk_output(SAMPLE).unwrap();
        assert_eq!((r.requests, r.bytes), (677, 397185));
        assert!((r.duration_s - 1.005924).abs() < 1e-9);
        // wrk's own "Requests/sec: 673.01".
        assert!((r.requests_per_sec - 673.01).abs() < 0.01, "{r:?}");
        // The same percentiles as wrk's --latency text.
        let l = &r.latency_ms;
        assert_eq!(
            (l.p50, l.p75, l.p90, l.p99),
            (22.941, 29.082, 34.51, 63.327)
        );
        assert_eq!((l.max, l.mean), (89.704, 23.4905));
        assert_eq!(
            (r.non_2xx, r.api_errors, r.socket_errors.total()),
            (0, 0, 0)
        );
        assert!(r.problems().is_empty());
    }

    #[test]
    fn any_error_makes_a_run_unclean() {
        // wrk's text line counts non-2xx too; the larger count wins.
        let text = SAMPLE.replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 7\nRequests/sec:",
        );
        let r = parse_wrk_output(&text).unwrap();
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.problems(), ["7 non-2xx answers"]);
        let json = SAMPLE
            .replace("\"timeout\":0", "\"timeout\":2")
            .replace("\"api_errors\":0", "\"api_errors\":3");
        let r = parse_wrk_output(&json).unwrap();
        assert_eq!((r.api_errors, r.socket_errors.timeout), (3, 2));
        assert_eq!(r.problems().len(), 2, "{:?}", r.problems());
    }

    #[test]
    fn output_without_the_result_line_is_an_error() {
        let text: String = SAMPLE
            .lines()
            .filter(|l| !l.starts_with(MARKER))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_wrk_output(&text).is_err());
        assert!(parse_wrk_output(&format!("{MARKER}{{\"requests\":1}}")).is_err());
    }

    #[test]
    fn lua_strings_are_quoted() {
        assert_eq!(lua_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(lua_quote("x\ny"), r#""x\010y""#);
        let settings = WrkSettings::new(false);
        let script = lua_script(
            &Endpoint::device_token(&["i-1".into(), "i-2".into()]),
            "tok\"en",
            &settings,
            &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        );
        assert!(
            script.contains(
                r#"local paths = { "/v1/instances/i-1/auth", "/v1/instances/i-2/auth" }"#
            )
        );
        assert!(script.contains(r#"local token = "tok\"en""#));
        assert!(script.contains(r#"local body = "{}""#));
        assert!(
            script.contains(r#"local targets = { { "127.0.0.1", "1" }, { "127.0.0.1", "2" } }"#)
        );
        // 2 threads sharing 1,000 req/s: a slot every 2 ms per thread.
        assert!(script.contains("local interval_ms = 2\n"), "{script}");
        let closed = WrkSettings {
            rate_per_s: 0,
            ..settings
        };
        let script = lua_script(&Endpoint::list_instances(), "t", &closed, &[]);
        assert!(script.contains("local body = nil"));
        assert!(script.contains("local targets = {  }"));
        assert!(script.contains("local interval_ms = 0\n"));
    }

    #[test]
    fn endpoints_describe_themselves() {
        assert_eq!(
            Endpoint::list_instances().describe(),
            "GET /v1/instances/batch-query?page_no=1&page_size=100"
        );
        assert_eq!(
            Endpoint::device_token(&["a".into(), "b".into()]).describe(),
            "POST /v1/instances/{instance_id}/auth `{}`"
        );
    }

    #[test]
    fn postgres_url_port() {
        assert_eq!(
            url_port("postgres://postgres@127.0.0.1:5433/t_1"),
            Some(5433)
        );
        assert_eq!(url_port("postgres://u@host/db"), None);
    }

    /// A keep-alive HTTP/1.1 server on a thread answering `/ok` with `error_code` "0", `/refused`
    /// with a 200 carrying an error code, anything else 404; records the first requests' heads
    /// and counts them all.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
    type Count = std::sync::Arc<std::sync::atomic::AtomicU64>;
    fn canned_server() -> (String, Seen, Count) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let count = Count::default();
        let log = std::sync::Arc::clone(&seen);
        let counter = std::sync::Arc::clone(&count);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = std::sync::Arc::clone(&log);
                let counter = std::sync::Arc::clone(&counter);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; length];
                        let _ = reader.read_exact(&mut body);
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                        let (status, text) = match path.as_str() {
                            "/ok" => ("200 OK", r#"{"error_code":"0","error_msg":"OK"}"#),
                            "/refused" => ("200 OK", r#"{"error_code":"KOOPHONE.API.0002"}"#),
                            _ => ("404 Not Found", r#"{"error_code":"KOOPHONE.API.1000"}"#),
                        };
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        {
                            let mut log = log.lock().unwrap();
                            if log.len() < 4 {
                                log.push(format!("{head}\n{}", String::from_utf8_lossy(&body)));
                            }
                        }
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if conn.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (base, seen, count)
    }

    /// The generated script in the real wrk: headers and body as a client sends them, and
    /// both kinds of error counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_script_runs_in_wrk_and_counts_errors() {
        let (base, seen, _) = canned_server();
        let settings = WrkSettings {
            threads: 1,
            connections: 2,
            duration_s: 1,
            warmup_s: 0,
            timeout_s: 5,
            rate_per_s: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let run = |path: &str, body: Option<&str>| {
            let endpoint = Endpoint {
                name: "t".into(),
                method: if body.is_some() { "POST" } else { "GET" }.into(),
                paths: vec![path.into()],
                body: body.map(str::to_owned),
            };
            let script = dir.path().join(format!("{}.lua", &path[1..]));
            std::fs::write(
                &script,
                lua_script(&endpoint, "secret-token", &settings, &[]),
            )
            .unwrap();
            let (base, settings) = (base.clone(), settings.clone());
            async move { wrk(&base, &script, &settings, 1).await.unwrap() }
        };
        let ok = run("/ok", Some("{}")).await;
        assert!(ok.requests > 0 && ok.problems().is_empty(), "{ok:?}");
        let head = seen.lock().unwrap()[0].to_ascii_lowercase();
        assert!(head.starts_with("post /ok http/1.1"), "{head}");
        for h in [
            "x-auth-token: secret-token",
            "x-request-id: wrk-1-",
            "content-type: application/json",
            "content-length: 2",
        ] {
            assert!(head.contains(h), "{h} in {head}");
        }
        assert!(head.ends_with("\n{}"), "{head}");

        let missing = run("/missing", None).await;
        assert!(missing.requests > 0);
        assert_eq!((missing.non_2xx, missing.api_errors), (missing.requests, 0));
        let refused = run("/refused", None).await;
        assert!(refused.requests > 0);
        assert_eq!((refused.non_2xx, refused.api_errors), (0, refused.requests));
    }

    /// At a fixed rate the script sends what it is asked to, no more (a closed loop against
    /// this server would send thousands a second), on schedule, and spreads the threads over
    /// the targets it is given.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_script_holds_the_offered_rate_and_spreads_over_targets() {
        use std::sync::atomic::Ordering;
        let (first, _, first_count) = canned_server();
        let (second, _, second_count) = canned_server();
        let settings = WrkSettings {
            threads: 2,
            connections: 8,
            duration_s: 2,
            warmup_s: 0,
            timeout_s: 5,
            rate_per_s: 200,
        };
        let targets: Vec<String> = [&first, &second]
            .iter()
            .map(|b| b.trim_start_matches("http://").to_owned())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint {
            name: "t".into(),
            method: "GET".into(),
            paths: vec!["/ok".into()],
            body: None,
        };
        let script = dir.path().join("paced.lua");
        std::fs::write(&script, lua_script(&endpoint, "t", &settings, &targets)).unwrap();
        let run = wrk(&first, &script, &settings, settings.duration_s)
            .await
            .unwrap();
        assert!(run.problems().is_empty(), "{run:?}");
        // 200 req/s for 2 s; the schedule's last slots may fall past wrk's stop.
        assert!(
            (170.0..=215.0).contains(&run.requests_per_sec),
            "achieved {} req/s: {run:?}",
            run.requests_per_sec
        );
        let (a, b) = (
            first_count.load(Ordering::SeqCst),
            second_count.load(Ordering::SeqCst),
        );
        assert!(a > 150 && b > 150, "requests per target: {a}, {b}");
        // The server answers in microseconds, so a late start here is wrk itself descheduled
        // past 4 slots (a loaded machine): counted with its lag, and rare.
        assert!(run.late_starts < run.requests / 4, "{run:?}");
        assert_eq!(run.late_starts == 0, run.lag_sum_ms == 0.0, "{run:?}");
        assert!(run.lag_max_ms * run.late_starts as f64 >= run.lag_sum_ms - 1e-6);
    }
}
