//! Seed 001's pages over HTTP: the one status rule (`cloudphone_api::status`) on representative
//! codes of several operations, SyncCommand's `error_info` body, and regions: what BatchShowSku
//! offers is what CreateInstance accepts, also when the node announces a region other than
//! control's.

use std::time::Duration;

use cloudphone_testkit::fleet::{Fleet, error_code as code, order_sku};
use serde_json::{Value, json};

use crate::support::{get, ok};

/// A CreateInstance body for one `sku` in `region`.
fn order_in(sku: &str, region: &str) -> Value {
    let mut body: Value = serde_json::from_str(&order_sku(sku, 1)).unwrap();
    body["regionld"] = json!(region);
    body
}

/// SyncCommand's 400 and 500 bodies are `{error_code, error_info}` (tables 4-6, 4-7); its 200
/// (0002) and the statuses every page shares (401) keep §3.3's `error_msg`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_command_errors_carry_error_info() {
    let (fleet, acme, other, ids) = crate::operations::setup(1).await;
    let path = "/v1/instances/sync-command";

    // 1000 (a shell metacharacter, then a body that is not JSON): 400 with error_info only.
    let bad = json!({"command": "ls; reboot", "instance_ids": ids});
    for (status, body) in [
        fleet.post(path, &acme, &bad).await,
        fleet
            .call(reqwest::Method::POST, path, &acme, Some("{not json"))
            .await,
    ] {
        assert_eq!((status, code(&body)), (400, "KOOPHONE.API.1000"), "{body}");
        let fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, ["error_code", "error_info"], "{body}");
        assert!(!body["error_info"].as_str().unwrap().is_empty(), "{body}");
    }

    // 0002 is answered with 200, whose table names error_msg.
    let response = fleet
        .http
        .post(format!("{}{path}", fleet.api))
        .header("x-auth-token", &acme)
        .json(&json!({"command": "ls", "instance_ids": ids}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!((status, code(&body)), (200, "KOOPHONE.API.0002"), "{body}");
    assert!(
        body.get("error_msg").is_some() && body.get("error_info").is_none(),
        "{body}"
    );

    // Another tenant's instance (1001) and a bad token (6001): 401, §3.3's body.
    let good = json!({"command": "ls", "instance_ids": ids});
    for (token, expected) in [
        (&other, "KOOPHONE.API.1001"),
        (&"nope".to_string(), "KOOPHONE.API.6001"),
    ] {
        let (status, body) = fleet.post(path, token, &good).await;
        assert_eq!((status, code(&body)), (401, expected), "{body}");
        assert!(
            body.get("error_msg").is_some() && body.get("error_info").is_none(),
            "{body}"
        );
    }

    // The command itself: 200 with the results, as before.
    let body = ok(fleet.post(path, &acme, &good).await);
    assert_eq!(body["data"]["cmd_results"][0]["status"], 2, "{body}");
    // Every other page keeps error_msg for its 400.
    let (status, body) = fleet.post("/v1/instances/async-command", &acme, &bad).await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.1000"), "{body}");
    assert!(
        body.get("error_msg").is_some() && body.get("error_info").is_none(),
        "{body}"
    );
}

/// Codes the appendix gives with HTTP 200 are sent with 200 on every page, whatever table of
/// the page lists them; parameter errors stay 400 and ownership 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appendix_statuses_on_their_pages() {
    let fleet = Fleet::up("synthetic").await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let create = |body: Value| {
        let (fleet, acme) = (&fleet, acme.clone());
        async move {
            fleet
                .post_token_only("/v1/instances/create", &acme, &body)
                .await
        }
    };
    // CreateInstance: 3002, 3003, 3006 and 40010 are 200 (appendix), 3001 and 1000 are 400.
    let mut monthly_12 = order_in("kp.synthetic.720p", "cn-north-7");
    monthly_12["chargeParam"]["periodNum"] = json!(12);
    let mut no_os = order_in("kp.synthetic.720p", "cn-north-7");
    no_os["os"] = json!("AOSP7");
    let mut too_many = order_in("kp.synthetic.720p", "cn-north-7");
    too_many["count"] = json!(fleet.node_capacity + 1);
    let mut other_band = order_in("kp.synthetic.720p", "cn-north-7");
    other_band["bandSkuld"] = json!("kp.other-band");
    let mut count_text = order_in("kp.synthetic.720p", "cn-north-7");
    count_text["count"] = json!("two");
    for (body, expected) in [
        (
            order_in("kp.synthetic.720p", "eu-west-0"),
            (200, "KOOPHONE.API.3002"),
        ),
        (
            order_in("kp.x11.720p", "cn-north-7"),
            (200, "KOOPHONE.API.3002"),
        ),
        (no_os, (200, "KOOPHONE.API.3003")),
        (monthly_12, (200, "KOOPHONE.API.3006")),
        (too_many, (200, "KOOPHONE.API.40010")),
        (other_band, (400, "KOOPHONE.API.3001")),
        (count_text, (400, "KOOPHONE.API.1000")),
    ] {
        let (status, answer) = create(body.clone()).await;
        assert_eq!((status, code(&answer)), expected, "{body}: {answer}");
        assert!(answer["error_msg"].is_string(), "{answer}");
        assert!(
            answer.get("data").is_none(),
            "an error carries no data: {answer}"
        );
    }
    assert_eq!(fleet.list(&acme).await["data"]["result"], json!([]));

    // BatchShowSku: a bad type is 1000; ListInstances: 5002 (its 400 table); GetTask: 1323.
    // All 400.
    for (path, expected) in [
        ("/v1/instances/sku?type=7", (400, "KOOPHONE.API.1000")),
        (
            "/v1/instances/batch-query?page_no=1&page_size=10&query_start_time=yesterday",
            (400, "KOOPHONE.API.5002"),
        ),
        (
            "/v1/instances/tasks/ZGCAnothing",
            (400, "KOOPHONE.API.1323"),
        ),
    ] {
        let (status, answer) = get(&fleet, path, &acme).await;
        assert_eq!((status, code(&answer)), expected, "{path}: {answer}");
    }
    // GetDeviceToken of an unknown instance: 1001 (401).
    let (status, answer) = fleet
        .post_token_only("/v1/instances/unknown1/auth", &acme, &json!({}))
        .await;
    assert_eq!(
        (status, code(&answer)),
        (401, "KOOPHONE.API.1001"),
        "{answer}"
    );
}

/// A node that announces `cn-southwest-252` (control's own region is `cn-north-7`) sells its
/// SKUs there: BatchShowSku lists that region and only it, CreateInstance accepts an order for
/// it and the instance runs; control's own region, where no node is, is not offered and an
/// order for it is 3002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_another_region_sells_there() {
    const REGION: &str = "cn-southwest-252";
    let fleet = Fleet::up_in_region("synthetic", REGION).await;
    let acme = fleet.login("acme", "correct-horse-1").await;

    let sku = ok(get(&fleet, "/v1/instances/sku?type=0", &acme).await);
    let regions = sku["data"]["skuSpecResponseList"].as_array().unwrap();
    let offered: Vec<(&str, &str)> = regions
        .iter()
        .flat_map(|r| {
            let region = r["regionId"].as_str().unwrap();
            r["skuResponses"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |s| (region, s["cbcSkuId"].as_str().unwrap()))
        })
        .collect();
    assert!(offered.contains(&(REGION, "kp.synthetic.720p")), "{sku}");
    assert!(offered.iter().all(|(region, _)| *region == REGION), "{sku}");

    // What is offered is accepted: an order for every offered SKU in its region, and the
    // instances run.
    for (region, sku_id) in &offered {
        ok(fleet
            .post_token_only("/v1/instances/create", &acme, &order_in(sku_id, region))
            .await);
    }
    fleet
        .wait_running_status(&acme, 2, offered.len(), Duration::from_secs(60))
        .await;
    let listed = fleet.list(&acme).await;
    let rows = listed["data"]["result"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["region"] == REGION && r["instance_sku"] == "kp.synthetic.720p"),
        "{listed}"
    );

    // What is not offered is refused: control's own region has no node.
    let (status, answer) = fleet
        .post_token_only(
            "/v1/instances/create",
            &acme,
            &order_in("kp.synthetic.720p", "cn-north-7"),
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (200, "KOOPHONE.API.3002"),
        "{answer}"
    );
}
