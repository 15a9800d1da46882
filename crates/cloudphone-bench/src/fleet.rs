//! The fleet benchmark for operators: launch N instances at a given rate through the public
//! API of any deployment (IAM login → CreateInstance per instance → poll ListInstances) and
//! report launch-to-ready times and failures, then stream every ready instance to a WebRTC
//! viewer (GetDeviceToken → its signaling URL) and report the frame rate each one delivered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::stats::{Summary, summarize};

/// What to launch, and where.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct FleetArgs {
    /// Base URL of the control API, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub api: String,
    #[arg(long)]
    pub domain: String,
    #[arg(long)]
    pub user: String,
    /// The user's password (or CLOUDPHONE_BENCH_PASSWORD, to keep it out of `ps`).
    #[arg(long, env = "CLOUDPHONE_BENCH_PASSWORD", hide_env_values = true)]
    #[serde(skip_serializing, default)]
    pub password: String,
    #[arg(long)]
    pub project: String,
    /// Instances to launch.
    #[arg(long, default_value_t = 4)]
    pub count: u32,
    /// Launch requests per second.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Instance SKU to order.
    #[arg(long, default_value = "kp.x11.720p")]
    pub sku: String,
    /// Region id of the order.
    #[arg(long, default_value = "cn-north-7")]
    pub region: String,
    /// Give up on an instance after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Delete the launched instances afterwards.
    #[arg(long)]
    pub cleanup: bool,
    /// Then stream every ready instance at once for this many seconds (H.264 720P, WIFI) and
    /// report the decoded frame rate of each; 0 skips streaming.
    #[arg(long, default_value_t = 5)]
    #[serde(default)]
    pub stream_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetResults {
    pub(crate) args: FleetArgs,
    /// CreateInstance sent → running_status 2 in ListInstances.
    pub(crate) launch_to_ready_ms: Summary,
    pub(crate) samples: Vec<f64>,
    /// CreateInstance answered, ms.
    pub(crate) create_call_ms: Summary,
    pub ready: usize,
    pub failures: Vec<String>,
    /// Frames decoded per second by one viewer per ready instance, all streaming at once over
    /// `args.stream_secs` (after each one's first frame).
    #[serde(default)]
    pub streamed_fps: Vec<f64>,
    #[serde(default)]
    pub(crate) streamed_fps_summary: Summary,
    #[serde(default)]
    pub(crate) streamed_fps_min: f64,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    request: std::sync::atomic::AtomicU64,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let n = self
            .request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-auth-token", &self.token)
            .header("x-request-id", format!("bench-fleet-{n}"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.with_context(|| path.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }
}

async fn login(http: &reqwest::Client, a: &FleetArgs) -> Result<String> {
    let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": a.user, "password": a.password, "domain": {"name": a.domain}}}},
        "scope": {"project": {"name": a.project}}}});
    let resp = http
        .post(format!("{}/v3/auth/tokens", a.api))
        .json(&body)
        .send()
        .await
        .context("IAM login")?;
    if resp.status().as_u16() != 201 {
        bail!("IAM login: HTTP {}", resp.status());
    }
    Ok(resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .context("no X-Subject-Token")?
        .to_owned())
}

/// Every instance the tenant sees, id → running_status.
async fn statuses(api: &Api) -> Result<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for page in 1.. {
        let (status, body) = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/instances/batch-query?page_no={page}&page_size=100"),
                None,
            )
            .await?;
        if status != 200 {
            bail!("ListInstances: HTTP {status}: {body}");
        }
        let rows = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for r in &rows {
            if let (Some(id), Some(s)) = (r["instance_id"].as_str(), r["running_status"].as_i64()) {
                out.insert(id.to_owned(), s);
            }
        }
        if rows.len() < 100 {
            break;
        }
    }
    Ok(out)
}

pub async fn run(args: FleetArgs) -> Result<FleetResults> {
    let http = reqwest::Client::new();
    let token = login(&http, &args).await?;
    let api = std::sync::Arc::new(Api {
        http,
        base: args.api.trim_end_matches('/').to_owned(),
        token,
        request: Default::default(),
    });
    let order = json!({"os": "AOSP11", "instanceSkuld": args.sku, "bandSkuld": "kp.bandwidth",
        "regionld": args.region, "instanceNamePrefix": "bench", "bandSize": 4, "count": 1,
        "chargeParam": {"chargingMode": 1, "periodType": 2, "periodNum": 1, "isAutoPay": 1, "isAutoRenew": 0}});
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut launches = Vec::new();
    for i in 0..args.count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let api = std::sync::Arc::clone(&api);
        let order = order.clone();
        launches.push(tokio::spawn(async move {
            let sent = Instant::now();
            let r = api
                .call(reqwest::Method::POST, "/v1/instances/create", Some(order))
                .await;
            (sent, sent.elapsed(), r)
        }));
    }
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut failures = Vec::new();
    let mut create_ms = Vec::new();
    for l in launches {
        let (sent, took, r) = l.await?;
        create_ms.push(took.as_secs_f64() * 1e3);
        match r {
            Ok((200, body)) if body["error_code"] == "0" => {
                for i in body["data"]["instanceInfos"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(id) = i["instanceId"].as_str() {
                        pending.insert(id.to_owned(), sent);
                    }
                }
            }
            Ok((status, body)) => failures.push(format!("CreateInstance: HTTP {status}: {body}")),
            Err(e) => failures.push(format!("CreateInstance: {e:#}")),
        }
    }
    let launched: Vec<String> = pending.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut samples = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let now = Instant::now();
        match statuses(&api).await {
            Ok(s) => pending.retain(|id, sent| {
                if s.get(id) == Some(&2) {
                    samples.push(now.duration_since(*sent).as_secs_f64() * 1e3);
                    false
                } else {
                    true
                }
            }),
            Err(e) => failures.push(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in pending.keys() {
        failures.push(format!("{id}: not running after {} s", args.timeout_secs));
    }
    let ready_ids: Vec<String> = launched
        .iter()
        .filter(|id| !pending.contains_key(*id))
        .cloned()
        .collect();
    let mut streamed_fps = Vec::new();
    if args.stream_secs > 0 && !ready_ids.is_empty() {
        let window = Duration::from_secs(args.stream_secs);
        let tasks: Vec<_> = ready_ids
            .iter()
            .map(|id| {
                let api = std::sync::Arc::clone(&api);
                let id = id.clone();
                tokio::spawn(async move { stream_fps(&api, &id, window).await })
            })
            .collect();
        for (id, t) in ready_ids.iter().zip(tasks) {
            match t.await {
                Ok(Ok(fps)) => streamed_fps.push(fps),
                Ok(Err(e)) => failures.push(format!("{id}: streaming: {e:#}")),
                Err(e) => failures.push(format!("{id}: streaming task: {e}")),
            }
        }
    }
    if args.cleanup && !launched.is_empty() {
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                "/v1/instances/delete",
                Some(json!({"instanceIdList": launched})),
            )
            .await?;
        if status != 200 {
            failures.push(format!("DeleteInstance: HTTP {status}: {body}"));
        }
    }
    let s = summarize(&samples);
    let fps = summarize(&streamed_fps);
    let fps_min = streamed_fps.iter().copied().reduce(f64::min).unwrap_or(0.0);
    println!(
        "fleet: {} of {} ready; launch-to-ready p50 {:.0} ms, max {:.0} ms; streamed fps mean {:.1}, min {:.1} over {} instances; {} failures",
        samples.len(),
        args.count,
        s.p50,
        s.max,
        fps.mean,
        fps_min,
        streamed_fps.len(),
        failures.len()
    );
    Ok(FleetResults {
        ready: samples.len(),
        launch_to_ready_ms: s,
        samples,
        create_call_ms: summarize(&create_ms),
        failures,
        streamed_fps,
        streamed_fps_summary: fps,
        streamed_fps_min: fps_min,
        args,
    })
}

/// GetDeviceToken for `id`, a viewer on the signaling URL it names, and the frames it decodes
/// per second over `window` once the first one is in.
async fn stream_fps(api: &Api, id: &str, window: Duration) -> Result<f64> {
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{id}/auth"),
            Some(json!({})),
        )
        .await?;
    let data = &body["data"];
    let (Some(url), Some(device), Some(token)) = (
        data["resource"]["rtc"]["ice_signaling"]["signaling_url"].as_str(),
        data["resource"]["device_id"].as_str(),
        data["device_token"].as_str(),
    ) else {
        bail!("GetDeviceToken: HTTP {status}: {body}");
    };
    let hello = cloudphone_signaling::Hello {
        device_id: device.to_owned(),
        device_token: token.to_owned(),
        network_type: cloudphone_signaling::NetworkType::Wifi,
        encoding_type: cloudphone_signaling::EncodingType::H264,
        definition: cloudphone_signaling::Definition::P720,
    };
    let mut viewer = crate::viewer::Viewer::connect(url, hello).await?;
    viewer.first_frame(Duration::from_secs(20)).await?;
    // Past the start-up burst (frames queued while the first key frame was awaited).
    viewer.pump_for(Duration::from_millis(500)).await?;
    let before = viewer.frames();
    let started = Instant::now();
    viewer.pump_for(window).await?;
    let fps = (viewer.frames() - before) as f64 / started.elapsed().as_secs_f64();
    viewer.close().await;
    Ok(fps)
}
