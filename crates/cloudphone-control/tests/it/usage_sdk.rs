//! The official SDKs (`huaweicloudsdklive`, `volcengine`, from PyPI in a venv this test creates
//! under `target/`) against a live control + node: after a real encoder session of N seconds
//! both report N/60 minutes under the right class, also when the node or control is stopped
//! mid-session, and a record the live report stream missed still arrives. Also: AK/SK creation
//! over IAM's form, and tenant isolation of both APIs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cloudphone_testkit::browser::workspace;
use cloudphone_testkit::fleet::{Fleet, ScopedLogin as Tenant};
use cloudphone_testkit::wait_for;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{
    create_domain, final_usage_stored, held_for, iso, now_ms, start_viewer, venv_python,
};

/// The streaming domain cloud-phone sessions bill under when the tenant has none of its own.
fn default_domain(tenant: &Tenant) -> String {
    format!("{}.live.cloudphone", tenant.tenant_id)
}

async fn tenant(fleet: &Fleet, domain: &str, password: &str) -> Tenant {
    fleet.scoped_login(domain, password).await
}

/// An AK/SK pair of `tenant`'s user.
async fn access_key(fleet: &Fleet, tenant: &Tenant, description: &str) -> (String, String) {
    fleet.access_key(&tenant.token, description).await
}

/// `GET url` with an IAM token.
async fn get_with_token(fleet: &Fleet, url: &str, token: &str) -> reqwest::Response {
    fleet
        .http
        .get(url)
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap()
}

/// `tests/sdk/query.py`'s environment: `tenant`'s default domain, windows around now.
fn sdk_vars(ak: &str, sk: &str, tenant: &Tenant) -> Vec<(&'static str, String)> {
    let now = now_ms();
    vec![
        ("CP_AK", ak.to_string()),
        ("CP_SK", sk.to_string()),
        ("CP_PROJECT", tenant.project_id.clone()),
        ("CP_DOMAIN", default_domain(tenant)),
        ("CP_START", iso(now - 3_600_000)),
        ("CP_END", iso(now + 60_000)),
        ("CP_VSTART", iso(now - 86_400_000)),
        ("CP_VEND", iso(now + 3_600_000)),
    ]
}

fn sdk_command(python: &PathBuf, fleet: &Fleet, vars: &[(&str, String)]) -> std::process::Output {
    Command::new(python)
        .arg(workspace().join("tests/sdk/query.py"))
        .env("CP_ENDPOINT", &fleet.api)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

fn run_sdks(python: &PathBuf, fleet: &Fleet, vars: &[(&str, String)]) -> Value {
    let out = sdk_command(python, fleet, vars);
    assert!(
        out.status.success(),
        "SDK run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs both SDKs every 2 s until `done` holds or 60 s have passed (the issue's "shows up within
/// 60 s"); returns the last answer.
async fn poll_sdks(
    python: &PathBuf,
    fleet: &Fleet,
    vars: &[(&str, String)],
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = run_sdks(python, fleet, vars);
        if done(&result) || Instant::now() > deadline {
            return result;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn huawei_minutes(body: &Value, spec: &str) -> f64 {
    body["summary_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] == spec)
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

/// Volcengine minutes of a 540P H.264 session (`Normal_H264`, `720P`).
fn volc_minutes(result: &Value) -> f64 {
    result["volcengine"]["Result"]["TranscodeDataList"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["TranscodeType"] == "Normal_H264" && e["Resolution"] == "720P")
        .map(|e| e["Duration"].as_f64().unwrap())
        .sum()
}

/// The encoder runs from hello to the socket's close: allow 1 s of pipeline start/stop on top
/// of one 30 fps frame interval.
const SESSION_SLACK_S: f64 = 1.0 + 1.0 / 30.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_official_sdks_report_a_real_session_under_the_right_class() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let fleet = Fleet::up("synthetic").await;
    let acme = tenant(&fleet, "acme", "correct-horse-1").await;
    let other = tenant(&fleet, "other", "correct-horse-2").await;
    let ids = fleet.running_instances(&acme.token, 1).await;

    let (ak, sk) = access_key(&fleet, &acme, "finance").await;
    let credentials = format!("{}/v3.0/OS-CREDENTIAL/credentials", fleet.api);
    let listed: Value = get_with_token(&fleet, &credentials, &acme.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["credentials"][0]["access"], ak.as_str());
    assert!(listed["credentials"][0].get("secret").is_none());

    // A real encoder session of N seconds.
    let hold = Duration::from_secs(8);
    let (viewer, started) = start_viewer(&fleet, &acme.token, &ids[0], held_for(hold)).await;
    let (ready, _) = viewer.await.unwrap();
    let watched = started.elapsed().as_secs_f64();
    assert_eq!(ready["video"]["height"].as_u64(), Some(960), "{ready}");

    let domain = default_domain(&acme);
    let vars = sdk_vars(&ak, &sk, &acme);
    // Shows up within 60 s (the final record arrives when the encoder stops).
    let result = poll_sdks(&python, &fleet, &vars, |r| {
        huawei_minutes(&r["huawei"], "H264_HD") * 60.0 >= watched - 1.5
    })
    .await;
    let expected = hold.as_secs_f64() / 60.0;
    let huawei = huawei_minutes(&result["huawei"], "H264_HD");
    let volc = volc_minutes(&result);
    eprintln!(
        "session held {:.3} s (viewer side {watched:.3} s): huawei {huawei} min, volcengine {volc:.5} min ({:.3} s)",
        hold.as_secs_f64(),
        volc * 60.0
    );
    // Huawei also rounds to 2 decimals (0.005 min).
    assert!(
        (volc - expected).abs() * 60.0 < SESSION_SLACK_S,
        "volcengine {volc} vs {expected}"
    );
    assert!(
        (huawei - expected).abs() < SESSION_SLACK_S / 60.0 + 0.005,
        "huawei {huawei} vs {expected}"
    );
    assert_eq!(
        result["volcengine"]["Result"]["DomainList"],
        json!([domain.clone()])
    );
    assert_eq!(result["volcengine"]["ResponseMetadata"]["Service"], "live");

    // Tenant isolation: the other tenant's token on acme's project, acme's key on the other's
    // project, and the other tenant asking for acme's domain: refused, no data.
    let url = |project: &str| {
        format!(
            "{}/v2/{project}/stats/transcode?publish_domain={domain}",
            fleet.api
        )
    };
    let r = get_with_token(&fleet, &url(&acme.project_id), &other.token).await;
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().contains_key("x-request-id"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], "APIGW.0302");
    let r = get_with_token(&fleet, &url(&other.project_id), &other.token).await;
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error_code": "LIVE.100011001", "error_msg": "Invalid request parameter: publish_domain"})
    );
    // Token auth on the own project works and agrees with the SDK.
    let own_url = format!(
        "{}&start_time={}&end_time={}",
        url(&acme.project_id),
        vars[4].1,
        vars[5].1
    );
    let own: Value = get_with_token(&fleet, &own_url, &acme.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own["summary_list"], result["huawei"]["summary_list"]);
    let mut other_vars = vars.clone();
    other_vars[2].1 = other.project_id.clone();
    let out = sdk_command(&python, &fleet, &other_vars);
    assert!(
        !out.status.success(),
        "acme's key cannot read another project"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("APIGW.0302"));
}

/// A node SIGKILLed mid-session: on restart it closes the session up to its last checkpoint and
/// delivers the closing record, so both SDKs report what ran (to about a second), and nothing
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_session_loses_no_minute() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let mut fleet = Fleet::up("synthetic").await;
    let acme = tenant(&fleet, "acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme.token, 1).await;
    let (ak, sk) = access_key(&fleet, &acme, "restart").await;
    let (viewer, started) = start_viewer(
        &fleet,
        &acme.token,
        &ids[0],
        held_for(Duration::from_secs(30)),
    )
    .await;
    // A measurement window: the encoder really runs about 5 s before the kill.
    tokio::time::sleep(Duration::from_secs(5)).await;
    fleet.node.as_mut().unwrap().stop_with(Signal::SIGKILL);
    let ran = started.elapsed().as_secs_f64();
    let _ = viewer.await;
    fleet.start_node();
    fleet.wait_node("up", Duration::from_secs(30)).await;
    // Control bills a session with no final record up to now (up to a minute past its last
    // record); once the node's closing record (written from its checkpoint) is stored, only it
    // gives the figure. It is delivered when control reconnects: the 60 s the issue allows.
    final_usage_stored(&fleet, &acme.tenant_id, &ids[0], Duration::from_secs(60)).await;

    let vars = sdk_vars(&ak, &sk, &acme);
    let result = poll_sdks(&python, &fleet, &vars, |r| {
        (volc_minutes(r) * 60.0 - ran).abs() < 1.5
    })
    .await;
    let volc = volc_minutes(&result) * 60.0;
    let huawei = huawei_minutes(&result["huawei"], "H264_HD") * 60.0;
    eprintln!("encoder ran {ran:.3} s until SIGKILL: volcengine {volc:.3} s, huawei {huawei:.1} s");
    // One checkpoint interval (1 s) plus pipeline start, and Huawei's 0.01 min rounding.
    assert!(
        (volc - ran).abs() < 1.5,
        "volcengine {volc} s vs {ran} s run"
    );
    assert!(
        (huawei - ran).abs() < 1.5 + 0.6,
        "huawei {huawei} s vs {ran} s run"
    );
}

/// One 30 fps frame.
const FRAME_S: f64 = 1.0 / 30.0;
/// How long a busy node may take to notice a viewer's close and stop the encoder.
const CLOSE_S: f64 = 0.25;

/// Control stopped twice during one session while the node keeps encoding: once gracefully
/// (SIGTERM) and restarted mid-session, once with SIGKILL, the viewer leaving while control is
/// down (so the last partial records and the closing one wait on the node's disk), then
/// restarted. The node emits a record every second here, so several fall into each outage and a
/// lost one would leave a gap. Both SDKs report the whole session once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_restarted_mid_session_loses_no_minute_and_counts_none_twice() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let mut fleet = Fleet::up_with("synthetic", "", "[webrtc]\nusage_interval_secs = 1\n").await;
    let acme = tenant(&fleet, "acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme.token, 1).await;
    let (ak, sk) = access_key(&fleet, &acme, "control-restart").await;
    let (leave, left) = tokio::sync::oneshot::channel::<()>();
    let (viewer, started) = start_viewer(&fleet, &acme.token, &ids[0], async move {
        let _ = left.await;
    })
    .await;
    let api = fleet.api.clone();

    // Part of the session is stored before the first outage.
    wait_for("a first stored record", Duration::from_secs(30), || {
        stored_at_least(&fleet, &api, 1.0)
    })
    .await;
    let status = fleet.control.as_mut().unwrap().stop_with(Signal::SIGTERM);
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop: {status:?}"
    );
    // Several records fall into the outage: two more wait on the node's disk.
    pending_records_grow(&fleet, 2, "two records written while control is stopped").await;
    fleet.start_control();
    fleet.wait_healthy(&api).await;
    fleet.wait_node("up", Duration::from_secs(30)).await;
    // The restarted control has them (the node's replay) before it goes down again.
    wait_for(
        "the first outage's records",
        Duration::from_secs(30),
        || stored_at_least(&fleet, &api, 2.0),
    )
    .await;

    fleet.control.as_mut().unwrap().stop_with(Signal::SIGKILL);
    // The viewer leaves while control is down, after at least three partial records: those and
    // the closing one exist only on the node's disk.
    pending_records_grow(&fleet, 3, "three records written while control is killed").await;
    leave.send(()).unwrap();
    let (ready, hold) = viewer.await.unwrap();
    let watched = started.elapsed().as_secs_f64();
    assert_eq!(ready["type"], "ready");
    wait_for(
        "the closing record on the node's disk",
        Duration::from_secs(30),
        || async {
            pending_records(&fleet)
                .iter()
                .any(|r| r["final"] == true)
                .then_some(())
        },
    )
    .await;
    fleet.start_control();
    fleet.wait_healthy(&api).await;
    fleet.wait_node("up", Duration::from_secs(30)).await;

    // Those records reach this control only through the node's replay.
    let replayed = wait_for("replayed usage records", Duration::from_secs(30), || {
        stored_at_least(&fleet, &api, 4.0)
    })
    .await;

    let vars = sdk_vars(&ak, &sk, &acme);
    let held = hold.as_secs_f64();
    // The encoder starts before the node sends `ready` and stops after the viewer closes, so it
    // ran at least `hold` (nothing lost: one frame of slack) and at most the viewer's whole
    // connection (`watched`) plus the node noticing the close (`CLOSE_S`; a record counted twice
    // would add seconds).
    let in_bounds = |s: f64| s >= held - FRAME_S && s <= watched + FRAME_S + CLOSE_S;
    // An open session would be billed up to now and grow between two answers; a closed one
    // answers the same figure twice.
    let mut previous = f64::NAN;
    let result = poll_sdks(&python, &fleet, &vars, |r| {
        let volc = volc_minutes(r) * 60.0;
        let settled = in_bounds(volc) && volc == previous;
        previous = volc;
        settled
    })
    .await;
    let volc = volc_minutes(&result) * 60.0;
    let huawei = huawei_minutes(&result["huawei"], "H264_HD") * 60.0;
    eprintln!(
        "session held {held:.3} s (viewer side {watched:.3} s) across two control restarts \
         ({replayed} records replayed to the second): volcengine {volc:.3} s, huawei {huawei:.1} s"
    );
    assert!(
        in_bounds(volc),
        "volcengine {volc} s vs {held} s held, {watched} s connected"
    );
    // Huawei rounds to 0.01 min (0.3 s either way).
    assert!(
        huawei >= held - FRAME_S - 0.3 && huawei <= watched + FRAME_S + CLOSE_S + 0.3,
        "huawei {huawei} s vs {held} s held, {watched} s connected"
    );
}

/// A record that reaches the node's disk after a report stream took its snapshot of unsent
/// records, but was emitted before the stream subscribed to new ones (the node's buffer writes
/// records as they are broadcast, so both can miss it), is delivered on that same stream: the
/// node resends what control has not acknowledged every few seconds, not only on reconnects
/// (which may be hours apart). The record is put on the node's disk directly, which is exactly
/// the state that race leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_live_stream_missed_is_resent_without_a_reconnect() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let fleet = Fleet::up("synthetic").await;
    let acme = tenant(&fleet, "acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme.token, 1).await;
    let (ak, sk) = access_key(&fleet, &acme, "resend").await;
    // The domain usage bills under (made by the first record otherwise), so the SDKs can ask.
    create_domain(&fleet, "acme", &default_domain(&acme), true);
    // The record covers the 30 s from now: control refuses usage from before its instance
    // existed (created seconds ago) and cuts records at its own now + 30 s of clock skew. It
    // stays within one hour, so Huawei's hourly buckets hold it whole.
    let hour_ms = 3_600_000;
    if now_ms() % hour_ms > hour_ms - 45_000 {
        let to_next_hour = hour_ms - now_ms() % hour_ms + 1_000;
        tokio::time::sleep(Duration::from_millis(to_next_hour as u64)).await;
    }
    let now = now_ms();
    let record = json!({"record_id": "missedbythelivestream0001", "session_id": "missedsession0001",
        "tenant_id": acme.tenant_id, "instance_id": ids[0], "codec": "H264", "width": 540,
        "height": 960, "start_unix_ms": now, "end_unix_ms": now + 30_000, "final": true});
    let pending = fleet.path("node-state/usage/pending");
    let tmp = pending.join("missedbythelivestream0001.tmp");
    std::fs::write(&tmp, record.to_string()).unwrap();
    std::fs::rename(&tmp, pending.join("missedbythelivestream0001.json")).unwrap();
    let written = Instant::now();

    let vars = sdk_vars(&ak, &sk, &acme);
    // Until both vendors' answers have it: query.py asks Huawei first, and the record can
    // land between the two queries (seen once: Volcengine 0.5, Huawei empty).
    let result = poll_sdks(&python, &fleet, &vars, |r| {
        volc_minutes(r) > 0.0 && huawei_minutes(&r["huawei"], "H264_HD") > 0.0
    })
    .await;
    let took = written.elapsed();
    eprintln!("a record the stream missed arrived after {took:?}");
    assert!(close_to(volc_minutes(&result), 0.5), "{result}");
    assert_eq!(
        huawei_minutes(&result["huawei"], "H264_HD"),
        0.5,
        "{result}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(fleet.node_status().await.as_deref(), Some("up"));
}

/// Control's `cloudphone_usage_records_total` (records stored since it started) once it is at
/// least `n`.
async fn stored_at_least(fleet: &Fleet, api: &str, n: f64) -> Option<f64> {
    let metrics = fleet.http.get(format!("{api}/metrics")).send().await.ok()?;
    let text = metrics.text().await.ok()?;
    let stored: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cloudphone_usage_records_total "))?
        .trim()
        .parse()
        .ok()?;
    (stored >= n).then_some(stored)
}

/// The usage records on the node's disk that control has not acknowledged (the node's
/// `usage/pending/<record_id>.json`).
fn pending_records(fleet: &Fleet) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(fleet.path("node-state/usage/pending")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect()
}

/// Waits until `more` records than now are pending on the node's disk.
async fn pending_records_grow(fleet: &Fleet, more: usize, what: &str) {
    let on_disk = pending_records(fleet).len();
    wait_for(what, Duration::from_secs(30), || async {
        (pending_records(fleet).len() >= on_disk + more).then_some(())
    })
    .await;
}

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}
