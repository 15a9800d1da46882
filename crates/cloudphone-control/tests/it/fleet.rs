//! End to end: real `cloudphone-control` and `cloudphone-node` processes on ephemeral ports,
//! talking gRPC; a tenant created by the admin CLI logs in through IAM, orders instances through
//! the public API, sees them run, sees them go unknown when their node is SIGKILLed and come
//! back when it restarts.

use std::time::{Duration, Instant};

use cloudphone_testkit::fleet::{Fleet, HEARTBEAT_TIMEOUT_MS, error_code as code, order};
use nix::sys::signal::Signal;

use crate::support::{get, list_with_request_id};

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
    let (status, _, _, ops_body) =
        crate::support::login_as(&fleet, "acme", "ops", "correct-horse-3", "eu-west-0").await;
    assert_eq!(status, 201);
    assert_eq!(ops_body["token"]["project"]["name"], "eu-west-0");
    let other = fleet.login("other", "correct-horse-2").await;

    // BatchShowSku offers what the node runs.
    let (status, skus) = get(&fleet, "/v1/instances/sku?type=0", &token).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = skus["data"]["skuSpecResponseList"][0]["skuResponses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["cbcSkuId"].as_str())
        .collect();
    assert!(ids.contains(&"kp.x11.720p"), "{skus}");

    // Order beyond capacity: 40010 and nothing created. Then a real order.
    let create = async |body: &str| {
        let path = "/v1/instances/create";
        fleet
            .call(reqwest::Method::POST, path, &token, Some(body))
            .await
    };
    let (status, body) = create(&order(5)).await;
    assert_eq!((status, code(&body)), (200, "KOOPHONE.API.40010"));
    let (status, body) = create(&order(2)).await;
    assert_eq!((status, code(&body)), (200, "0"), "{body}");
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
    let (_, theirs) = get(
        &fleet,
        &format!("/v1/instances/batch-query?page_no=1&page_size=10&instance_id={first_id}"),
        &other,
    )
    .await;
    assert_eq!(theirs["data"]["total_count"], 0);

    // The spec's codes for bad requests.
    let (status, body) = create("{not json").await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.1000"));
    let (status, body) = get(
        &fleet,
        "/v1/instances/batch-query?page_no=1&page_size=10",
        "bogus",
    )
    .await;
    assert_eq!((status, code(&body)), (401, "KOOPHONE.API.6001"));
    let (status, body) = list_with_request_id(&fleet, &token, None).await;
    assert_eq!((status, code(&body)), (200, "KOOPHONE.API.0002"));

    // A frozen node keeps its connection open but stops beating: the heartbeat timeout alone
    // must mark it down within the bound. (Polled, not slept: the monitor's timing is tested in
    // paused time by control's `nodes::tests`; this is the real frozen process end to end.)
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
        .get_unauthenticated("/metrics")
        .await
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
