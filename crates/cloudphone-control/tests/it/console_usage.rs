//! The console's Usage page in headless Chromium against real control + node processes: log in
//! through the page's form, see the minutes of a real encoder session, switch domains, ranges and
//! time zones, and download the CSV; every figure the page shows (chart, table, totals, CSV) must
//! equal what `GET /v2/{project_id}/stats/transcode` answers for the same window. Earlier days'
//! usage is added to the store directly (a real session cannot be backdated), so the daily views
//! have days, domains and classes to add up. Also: `GET /v1/{project_id}/domain` and the page's
//! error messages (unknown or expired token, a tenant without domains).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloudphone_control::store::{SqlStore, Store, UsageRow};
use cloudphone_testkit::browser::{Browser, workspace};
use cloudphone_testkit::fleet::Fleet;
use serde_json::{Value, json};

use crate::support::{create_domain, final_usage_stored, held_for, iso, now_ms, start_viewer};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// The browser's zone in this test, and its (DST-free) offset.
const ZONE: &str = "Asia/Shanghai";
const ZONE_OFFSET: i64 = 8 * HOUR;
const MIN: i64 = 60_000;

fn hundredths(v: &Value) -> i64 {
    (v.as_f64().unwrap() * 100.0).round() as i64
}

/// Where the screenshots go: `target/console-usage/`.
fn shots() -> PathBuf {
    let dir = workspace().join("target/console-usage");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// GET with an IAM token; status and JSON body.
async fn get(fleet: &Fleet, path_and_query: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = fleet.http.get(format!("{}{path_and_query}", fleet.api));
    if let Some(token) = token {
        request = request.header("x-auth-token", token);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// A finished session: domain, codec, (width, height), start, minutes.
type Session = (&'static str, &'static str, (i64, i64), i64, f64);

/// Session `n` of `tenant_id`, stored as a node would have.
fn seeded(
    n: usize,
    tenant_id: &str,
    (domain, codec, (width, height), start_ms, minutes): Session,
) -> UsageRow {
    UsageRow {
        record_id: format!("seed-record-{n}"),
        session_id: format!("seed-session-{n}"),
        tenant_id: tenant_id.into(),
        instance_id: format!("seed-instance-{n}"),
        node_id: "seed-node".into(),
        domain: domain.into(),
        app: "cloudphone".into(),
        stream: format!("seed-instance-{n}"),
        codec: codec.into(),
        width,
        height,
        start_ms,
        end_ms: start_ms + (minutes * MIN as f64) as i64,
        is_final: true,
        received_at_ms: start_ms,
    }
}

/// What the page shows: its status, the queries it made, table rows, totals, bars and legend.
async fn page_state(browser: &mut Browser) -> Value {
    let expr = r##"(() => {
      const num = (el) => Number(el.dataset.hundredths);
      const cells = (tr) => Object.fromEntries([...tr.querySelectorAll("td[data-class]")]
        .map((td) => [td.dataset.class || "TOTAL", { h: num(td), text: td.textContent }]));
      return {
        state: document.querySelector("#status").dataset.state,
        seq: Number(document.querySelector("#status").dataset.seq),
        error: document.querySelector("#error").textContent,
        paths: (window.cloudphoneUsage.view?.queries ?? []).map((q) => q.path),
        rows: [...document.querySelectorAll("#tbody tr")].map((tr) => ({ bucket: tr.dataset.bucket, cells: cells(tr) })),
        totals: [...document.querySelectorAll("#totals")].map(cells)[0] ?? {},
        bars: [...document.querySelectorAll("rect.bar")].map((r) => ({ bucket: r.dataset.bucket,
          class: r.dataset.class, h: num(r), height: Number(r.getAttribute("height")) })),
        legend: Object.fromEntries([...document.querySelectorAll("#summary .legend")].map((l) => [l.dataset.class, num(l)])),
        grand: num(document.querySelector("#grandTotal") ?? { dataset: { hundredths: "-1" } }),
        notes: document.querySelector("#notes").textContent,
      };
    })()"##;
    browser.ok(json!({"cmd": "eval", "expr": expr})).await["value"].clone()
}

/// Waits until the page has finished a load newer than `after` (fails on an error message).
async fn wait_ready(browser: &mut Browser, after: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = page_state(browser).await;
        if state["state"] == "ready" && state["seq"].as_i64().unwrap() > after {
            return state;
        }
        assert!(
            state["state"] != "error",
            "the page shows an error: {}",
            state["error"]
        );
        assert!(Instant::now() < deadline, "page never ready: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the page's error message of `kind` (`data-kind`); returns its text.
async fn error_message(browser: &mut Browser, kind: &str) -> String {
    browser
        .ok(json!({"cmd": "wait_for", "selector": format!("#error[data-kind='{kind}']")}))
        .await;
    let error = browser
        .ok(json!({"cmd": "text", "selector": "#error"}))
        .await;
    error["text"].as_str().unwrap().to_string()
}

/// The same window from the API: per bucket and class, per (bucket, domain, class), and the
/// summary totals, in hundredths of a minute. `day_offset`: `None` for hourly buckets, else
/// days starting at midnight of that UTC offset.
#[derive(Debug, Default)]
struct Expected {
    cells: BTreeMap<(String, String), i64>,
    detail: BTreeMap<(String, String, String), i64>,
    totals: BTreeMap<String, i64>,
}

async fn expected(
    fleet: &Fleet,
    token: &str,
    paths: &[Value],
    day_offset: Option<i64>,
) -> Expected {
    let mut e = Expected::default();
    for path in paths {
        let path = path.as_str().unwrap();
        let (status, body) = get(fleet, path, Some(token)).await;
        assert_eq!(status, 200, "{path}: {body}");
        let domain = path
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("publish_domain="))
            .unwrap()
            .to_string();
        for hour in body["transcode_data_list"].as_array().unwrap() {
            let t = cloudphone_usage::huawei::parse_time(hour["time"].as_str().unwrap()).unwrap();
            let bucket = match day_offset {
                None => t,
                Some(off) => (t + off).div_euclid(DAY) * DAY - off,
            };
            for spec in hour["spec_list"].as_array().unwrap() {
                let (class, h) = (
                    spec["type"].as_str().unwrap().to_string(),
                    hundredths(&spec["value"]),
                );
                if h == 0 {
                    continue;
                }
                *e.cells.entry((iso(bucket), class.clone())).or_default() += h;
                *e.detail
                    .entry((iso(bucket), domain.clone(), class))
                    .or_default() += h;
            }
        }
        for s in body["summary_list"].as_array().unwrap() {
            let h = hundredths(&s["value"]);
            if h != 0 {
                *e.totals
                    .entry(s["type"].as_str().unwrap().to_string())
                    .or_default() += h;
            }
        }
    }
    e
}

/// Table, chart, legend and totals all equal the API's figures.
fn check_page(state: &Value, e: &Expected, buckets: usize) {
    let rows = state["rows"].as_array().unwrap();
    assert_eq!(rows.len(), buckets, "{state}");
    let mut table = BTreeMap::new();
    for row in rows {
        let bucket = row["bucket"].as_str().unwrap().to_string();
        let mut sum = 0;
        for (class, cell) in row["cells"].as_object().unwrap() {
            let h = cell["h"].as_i64().unwrap();
            // The text a person reads is the same figure.
            assert_eq!(cell["text"], format!("{:.2}", h as f64 / 100.0), "{row}");
            if class == "TOTAL" {
                assert_eq!(h, sum, "row total {row}");
            } else if h != 0 {
                sum += h;
                table.insert((bucket.clone(), class.clone()), h);
            }
        }
    }
    assert_eq!(table, e.cells, "table vs API hours");
    let bars: BTreeMap<_, _> = state["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert!(b["height"].as_f64().unwrap() >= 1.0, "visible bar {b}");
            (
                (
                    b["bucket"].as_str().unwrap().to_string(),
                    b["class"].as_str().unwrap().to_string(),
                ),
                b["h"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(bars, e.cells, "chart vs API hours");
    let totals: BTreeMap<String, i64> = state["totals"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(c, _)| *c != "TOTAL")
        .map(|(c, v)| (c.clone(), v["h"].as_i64().unwrap()))
        .filter(|(_, h)| *h != 0)
        .collect();
    assert_eq!(totals, e.totals, "totals vs API summary_list");
    let legend: BTreeMap<String, i64> = serde_json::from_value(state["legend"].clone()).unwrap();
    assert_eq!(legend, e.totals, "legend vs API summary_list");
    assert_eq!(
        state["grand"].as_i64().unwrap(),
        e.totals.values().sum::<i64>()
    );
}

/// Asks the API for the queries the page made (`state["paths"]`, days at `day_offset` or hours
/// for `None`) and checks the page against it ([`check_page`], `buckets` rows); returns the API's
/// figures for more checks.
async fn check_against_api(
    fleet: &Fleet,
    token: &str,
    state: &Value,
    day_offset: Option<i64>,
    buckets: usize,
) -> Expected {
    let e = expected(fleet, token, state["paths"].as_array().unwrap(), day_offset).await;
    check_page(state, &e, buckets);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_page_shows_and_exports_what_the_api_bills() {
    let fleet = Fleet::up("synthetic").await;
    create_domain(&fleet, "acme", "live.acme.example", true);
    create_domain(&fleet, "acme", "play.acme.example", false);
    let acme = fleet.scoped_login("acme", "correct-horse-1").await;
    let other = fleet.scoped_login("other", "correct-horse-2").await;

    // ShowDomain: the tenant's domains, the billing one marked; scoped like the usage API.
    let domains_of = |project: &str| format!("/v1/{project}/domain");
    let (status, body) = get(&fleet, &domains_of(&acme.project_id), Some(&acme.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 2);
    let listed: Vec<_> = body["domain_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["domain_type"], "push");
            assert_eq!(d["status"], "on");
            assert_eq!(d["region"], "cn-north-7");
            assert!(d["create_time"].as_str().unwrap().ends_with('Z'));
            (
                d["domain"].as_str().unwrap().to_string(),
                d["is_default"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("live.acme.example".to_string(), true),
            ("play.acme.example".to_string(), false)
        ]
    );
    let (_, one) = get(
        &fleet,
        &format!("{}?domain=play.acme.example", domains_of(&acme.project_id)),
        Some(&acme.token),
    )
    .await;
    assert_eq!(one["total"], 1);
    assert_eq!(one["domain_info"][0]["domain"], "play.acme.example");
    let (status, body) = get(&fleet, &domains_of(&acme.project_id), Some(&other.token)).await;
    assert_eq!((status, &body["error_code"]), (403, &json!("APIGW.0302")));
    let (status, body) = get(&fleet, &domains_of(&acme.project_id), None).await;
    assert_eq!((status, &body["error_code"]), (401, &json!("APIGW.0301")));
    let (status, body) = get(&fleet, &domains_of(&other.project_id), Some(&other.token)).await;
    assert_eq!(
        (status, body),
        (200, json!({"total": 0, "domain_info": []}))
    );

    // Earlier usage, stored as nodes would have: several days, both domains, four classes.
    let now = now_ms();
    let (hd, fhd, sd, hd265) = ((540, 960), (1080, 1920), (480, 640), (720, 1280));
    let live = "live.acme.example";
    let mut sessions: Vec<Session> = Vec::new();
    for k in 1..=6_i64 {
        let at = now - k * DAY - 3 * HOUR;
        sessions.push((live, "H264", hd, at, 4.0 + 2.5 * k as f64));
        if k % 2 == 0 {
            sessions.push((live, "H265", fhd, at + HOUR, 1.5 * k as f64));
        }
        if k % 3 == 0 {
            let play = "play.acme.example";
            sessions.push((play, "H264", sd, at - 2 * HOUR, 3.25));
        }
    }
    sessions.extend([
        (live, "H265", hd265, now - 5 * HOUR, 3.5),
        (live, "H264", hd, now - 9 * HOUR, 6.0),
        (live, "H264", hd, now - 20 * DAY, 30.0),
    ]);
    let rows: Vec<UsageRow> = sessions
        .into_iter()
        .enumerate()
        .map(|(n, session)| seeded(n, &acme.tenant_id, session))
        .collect();
    let store = SqlStore::connect(&fleet.store_url).await.unwrap();
    assert_eq!(store.store_usage(&rows).await.unwrap(), rows.len() as u64);

    // A real encoder session (H.264 540×960: H264_HD), billed under the default domain.
    let ids = fleet.running_instances(&acme.token, 1).await;
    let instance = ids[0].clone();
    let (viewer, started) = start_viewer(
        &fleet,
        &acme.token,
        &instance,
        held_for(Duration::from_secs(8)),
    )
    .await;
    viewer.await.unwrap();
    let watched = started.elapsed().as_secs_f64();
    // Wait for the final record (an open session is billed up to now), then read the figure.
    final_usage_stored(&fleet, &acme.tenant_id, &instance, Duration::from_secs(60)).await;
    let probe = format!(
        "/v2/{}/stats/transcode?publish_domain={live}&stream={instance}&start_time={}&end_time={}",
        acme.project_id,
        iso(now - 2 * HOUR),
        iso(now + 2 * HOUR)
    );
    let (status, body) = get(&fleet, &probe, Some(&acme.token)).await;
    assert_eq!(status, 200, "{body}");
    let real: i64 = body["summary_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| hundredths(&s["value"]))
        .sum();
    assert!(real > 0, "{body}");
    eprintln!("real session: {watched:.2} s watched, API says {real} hundredths of a minute");

    // The page: log in through its form, in a browser whose local zone is UTC+08:00.
    let mut browser = Browser::start(
        &format!("{}/console/usage", fleet.api),
        &[("VIEWER_TIMEZONE", ZONE)],
    )
    .await;
    browser
        .ok(json!({"cmd": "viewport", "width": 1280, "height": 1150}))
        .await;
    browser.console_login("acme", "correct-horse-1").await;
    let state = wait_ready(&mut browser, 0).await;
    let login_shown = browser
        .ok(json!({"cmd": "eval", "expr": "getComputedStyle(document.querySelector('#login')).display"}))
        .await;
    assert_eq!(
        login_shown["value"], "none",
        "the login form hides once signed in"
    );
    let boxes = browser
        .ok(json!({"cmd": "eval", "expr":
            "[...document.querySelectorAll('#domains input')].map((i) => [i.value, i.checked])"}))
        .await;
    assert_eq!(
        boxes["value"],
        json!([["live.acme.example", true], ["play.acme.example", false]]),
        "the default domain is preselected"
    );
    // Default view: last 24 hours, hourly, UTC, the default domain.
    let e = check_against_api(&fleet, &acme.token, &state, None, 24).await;
    assert!(e.totals.len() >= 2, "{e:?}");
    let zone_label = browser
        .ok(json!({"cmd": "text", "selector": "#zone option[value='local']"}))
        .await;
    assert_eq!(zone_label["text"], "Local, UTC+08:00");

    // Only the real session's stream: its minutes, non-zero, in the chart and the table.
    browser.fill("#stream", &instance).await;
    let seq = state["seq"].as_i64().unwrap();
    browser.click("#showBtn").await;
    let state = wait_ready(&mut browser, seq).await;
    assert!(
        state["paths"][0]
            .as_str()
            .unwrap()
            .contains(&format!("stream={instance}"))
    );
    let e = check_against_api(&fleet, &acme.token, &state, None, 24).await;
    assert_eq!(
        e.totals,
        BTreeMap::from([("H264_HD".to_string(), real)]),
        "only the real session"
    );
    assert!(
        (real as f64 / 100.0 - watched / 60.0).abs() < 0.02,
        "{real} hundredths vs {watched} s"
    );
    let shown = browser
        .ok(json!({"cmd": "text", "selector": "#totals td[data-class='H264_HD']"}))
        .await;
    assert_eq!(shown["text"], format!("{:.2}", real as f64 / 100.0));
    browser
        .ok(json!({"cmd": "screenshot", "path": shots().join("usage-24h-stream.png")}))
        .await;
    browser.fill("#stream", "").await;

    // Both domains, last 7 days, local days (UTC+08:00).
    let mut seq = page_state(&mut browser).await["seq"].as_i64().unwrap();
    browser
        .click("#domains input[value='play.acme.example']")
        .await;
    seq = wait_ready(&mut browser, seq).await["seq"].as_i64().unwrap();
    browser.select("#range", "7d").await;
    seq = wait_ready(&mut browser, seq).await["seq"].as_i64().unwrap();
    browser.select("#zone", "local").await;
    let state = wait_ready(&mut browser, seq).await;
    let paths = state["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 2, "one query per domain");
    assert!(
        !paths[0].as_str().unwrap().contains("stream="),
        "stream filter cleared"
    );
    let e = check_against_api(&fleet, &acme.token, &state, Some(ZONE_OFFSET), 7).await;
    // Local midnights: 16:00 UTC.
    for row in state["rows"].as_array().unwrap() {
        assert!(
            row["bucket"].as_str().unwrap().ends_with("T16:00:00Z"),
            "{row}"
        );
    }
    let classes: Vec<&String> = e.totals.keys().collect();
    assert_eq!(classes, ["H264_HD", "H264_SD", "H265_FHD", "H265_HD"]);
    assert!(state["notes"].as_str().unwrap().contains("UTC+08:00"));
    browser
        .ok(json!({"cmd": "screenshot", "path": shots().join("usage-7d-local.png"), "full_page": true}))
        .await;

    // The CSV is a real download and holds exactly the API's figures per day, domain and class.
    let download = browser
        .ok(json!({"cmd": "download", "selector": "#csvBtn"}))
        .await;
    let filename = download["filename"].as_str().unwrap();
    assert!(
        filename.starts_with("cloudphone-usage_") && filename.ends_with("_daily-local+0800.csv"),
        "{filename}"
    );
    let content = download["content"].as_str().unwrap();
    std::fs::write(shots().join(filename), content).unwrap();
    let mut lines = content.split("\r\n");
    assert_eq!(
        lines.next(),
        Some("bucket_start,bucket_end,domain,class,minutes")
    );
    let mut csv = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 5, "{line}");
        let start = cloudphone_usage::huawei::parse_time(f[0]).unwrap();
        let end = cloudphone_usage::huawei::parse_time(f[1]).unwrap();
        assert_eq!(end - start, DAY, "{line}");
        let minutes: f64 = f[4].parse().unwrap();
        assert_eq!(f[4], format!("{minutes:.2}"));
        csv.insert(
            (f[0].to_string(), f[2].to_string(), f[3].to_string()),
            (minutes * 100.0).round() as i64,
        );
    }
    assert_eq!(csv, e.detail, "CSV vs API hours");
    assert!(
        csv.keys().any(|(_, d, _)| d == "play.acme.example"),
        "both domains in the CSV"
    );

    // Last 30 days in UTC days: the day 20 days ago shows up too.
    let seq = state["seq"].as_i64().unwrap();
    browser.select("#zone", "utc").await;
    let seq = wait_ready(&mut browser, seq).await["seq"].as_i64().unwrap();
    browser.select("#range", "30d").await;
    let state = wait_ready(&mut browser, seq).await;
    let e = check_against_api(&fleet, &acme.token, &state, Some(0), 30).await;
    assert!(
        e.cells
            .keys()
            .any(|(bucket, _)| *bucket < iso(now - 10 * DAY)),
        "the session 20 days ago: {e:?}"
    );
    browser
        .ok(json!({"cmd": "screenshot", "path": shots().join("usage-30d-utc.png")}))
        .await;

    // An unknown or expired token: said plainly, and the login form is back.
    browser
        .ok(json!({"cmd": "eval", "expr": "sessionStorage.setItem('cp_token', 'no-such-token')"}))
        .await;
    browser
        .ok(json!({"cmd": "goto", "url": "/console/usage"}))
        .await;
    let error = error_message(&mut browser, "auth").await;
    assert!(
        error.contains("expired") && error.contains("APIGW.0301"),
        "{error}"
    );
    browser
        .ok(json!({"cmd": "wait_for", "selector": "#login", "state": "visible"}))
        .await;

    // A tenant without streaming domains is told so.
    browser.console_login("other", "correct-horse-2").await;
    let error = error_message(&mut browser, "no-domains").await;
    assert!(error.contains("no streaming domains"), "{error}");
    browser.quit().await;
}
