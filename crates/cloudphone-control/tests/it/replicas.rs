//! Control replicas (issue 17): slots are claimed in the database, so several control
//! processes on one PostgreSQL never overbook a node; SQLite allows one serving process.

use std::collections::HashMap;
use std::time::Duration;

use cloudphone_control::store::{self, InstanceRecord, PlacementStore, SlotCounts, Store};
use cloudphone_core::instance::ControlState;
use cloudphone_testkit::fleet::{Fleet, error_code, order_sku};
use cloudphone_testkit::process::binary;
use cloudphone_testkit::wait_for;
use serde_json::Value;

/// Node id → capacity: 50 free slots in all, on nodes of unequal size.
const NODES: [(&str, u32); 3] = [("cap-a", 15), ("cap-b", 17), ("cap-c", 18)];
const ORDERS: usize = 1_000;
const SKU: &str = "kp.synthetic.720p";

/// POSTs a CreateInstance of `count` to `api`; returns status and body.
async fn create(http: &reqwest::Client, api: &str, token: &str, count: u32) -> (u16, Value) {
    let response = http
        .post(format!("{api}/v1/instances/create"))
        .header("x-auth-token", token)
        .header("content-type", "application/json")
        .body(order_sku(SKU, count))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// 1,000 concurrent CreateInstance of one instance each, round-robin over 3 control replicas
/// on one PostgreSQL, for 3 nodes with 50 slots in all: exactly 50 succeed, every other one is
/// `KOOPHONE.API.40010` (HTTP 200, the appendix's), and no node holds more than its capacity,
/// read through every replica's API and in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_over_three_replicas_take_exactly_the_free_slots() {
    let url = cloudphone_testkit::postgres::fresh_database();
    let mut fleet = Fleet::new(Some(url.clone()), "synthetic");
    // What is measured is placement, not liveness: with the usual 1.5 s, a replica saturated by
    // 333 requests on 2 shared cores reads its nodes' report streams late (each report waits
    // for a pooled connection) and may count them down for a moment, answering 3002.
    fleet.heartbeat_timeout_ms = 10_000;
    fleet.create_tenant("acme", "correct-horse-1");
    fleet.start_control();
    fleet.wait_healthy(&fleet.api.clone()).await;
    let mut nodes = Vec::new();
    for (node_id, capacity) in NODES {
        fleet.node_capacity = capacity;
        nodes.push(fleet.start_extra_node(node_id).await);
    }
    // Started after the nodes joined, the other two replicas dial them from the store.
    let replicas = [
        fleet.add_control("control-2").await,
        fleet.add_control("control-3").await,
    ];
    let apis: Vec<String> = std::iter::once(fleet.api.clone())
        .chain(replicas.iter().map(|r| r.api.clone()))
        .collect();
    let token = fleet.login("acme", "correct-horse-1").await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // Every replica sees all three nodes up: an order of 51 is refused naming 50 free slots
    // (and creates nothing).
    for api in &apis {
        wait_for(
            &format!("{api} sees 50 free slots"),
            Duration::from_secs(30),
            || async {
                let (status, body) = create(&http, api, &token, 51).await;
                assert_eq!((status, error_code(&body)), (200, "KOOPHONE.API.40010"));
                body.to_string().contains("has 50 free slots").then_some(())
            },
        )
        .await;
    }

    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..ORDERS).map(|n| {
        let (http, api, token) = (&http, &apis[n % apis.len()], &token);
        async move { create(http, api, token, 1).await }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut outcomes: HashMap<(u16, String), usize> = HashMap::new();
    for (status, body) in &answers {
        *outcomes
            .entry((*status, error_code(body).to_string()))
            .or_default() += 1;
    }
    eprintln!(
        "{ORDERS} orders over {} replicas in {elapsed:?}: {outcomes:?}",
        apis.len()
    );
    let expected = HashMap::from([
        ((200, "0".to_string()), 50),
        ((200, "KOOPHONE.API.40010".to_string()), ORDERS - 50),
    ]);
    assert_eq!(outcomes, expected);

    // Through the API: every replica lists the same 50 instances.
    for api in &apis {
        let response = http
            .get(format!(
                "{api}/v1/instances/batch-query?page_no=1&page_size=50"
            ))
            .header("x-auth-token", &token)
            .header("x-request-id", "replicas-list")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"]["total_count"], 50, "{api}: {body}");
    }
    // In the database: no node over its capacity (here: every node exactly full).
    let store = store::open(&url).await.unwrap();
    let counts: HashMap<String, i64> = store.instance_counts().await.unwrap().into_iter().collect();
    for (node_id, capacity) in NODES {
        assert_eq!(
            counts.get(node_id).copied(),
            Some(i64::from(capacity)),
            "{node_id}: {counts:?}"
        );
    }
    drop(replicas);
    drop(nodes);
}

/// SQLite is single-process: a second control serving the same file exits non-zero at start
/// with an error that says so, and the first one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_control_on_one_sqlite_file_is_refused() {
    let mut fleet = Fleet::new(None, "synthetic");
    fleet.start_control();
    fleet.wait_healthy(&fleet.api.clone()).await;
    let config = fleet.write_replica_config("control-2");
    let second = tokio::process::Command::new(binary("cloudphone-control"))
        .args(["serve", "--config"])
        .arg(&config)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second control exits at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second control: {stderr}");
    assert!(
        stderr.contains("another control process is serving the SQLite database"),
        "{stderr}"
    );
    fleet.wait_healthy(&fleet.api.clone()).await;
}

/// A node of `capacity` in the store's fixture shape.
fn node(id: &str, capacity: i64) -> store::NodeRecord {
    store::NodeRecord {
        node_id: id.into(),
        grpc_endpoint: format!("http://{id}:50051"),
        signaling_base_url: format!("ws://{id}:8090"),
        region: "cn-north-7".into(),
        capacity,
        runtimes: vec!["x11".into()],
        encoders: vec!["x264enc".into()],
        version: "0.1.0".into(),
        status: "up".into(),
        last_seen_ms: 5,
    }
}

/// One instance on `node_id` if the counts under the locks leave it a slot, else "full".
fn one_on(
    node_id: &'static str,
    id: String,
) -> impl Fn(&SlotCounts) -> Result<Vec<InstanceRecord>, String> + Send + Sync {
    move |counts: &SlotCounts| {
        let used = counts.used.get(node_id).copied().unwrap_or(0);
        let capacity = counts.capacity.get(node_id).copied().unwrap_or(0);
        if used >= capacity {
            return Err("full".into());
        }
        Ok(vec![InstanceRecord::sample(&id, "t1", "p1", node_id)])
    }
}

/// The store's claims, with two pools on one database standing for two replicas: 20
/// concurrent single-instance claims on a node of 5 place exactly 5; a refused plan writes
/// nothing; a restore claim on a full node is refused and on a node with room succeeds.
async fn claims(url: &str) {
    let a = store::open(url).await.unwrap();
    a.migrate().await.unwrap();
    let b = store::open(url).await.unwrap();
    a.create_tenant(&store::NewTenant {
        tenant_id: "t1".into(),
        domain_name: "d1".into(),
        user_id: "u1".into(),
        user_name: "alice".into(),
        password_hash: "$argon2id$fake".into(),
        project_id: "p1".into(),
        project_name: "cn-north-7".into(),
        created_at_ms: 1,
    })
    .await
    .unwrap();
    a.upsert_node(&node("n1", 5)).await.unwrap();
    a.upsert_node(&node("n2", 1)).await.unwrap();
    let nodes = ["n1".to_string()];
    let outcomes = futures::future::join_all((0..20).map(|n| {
        let (store, nodes) = (if n % 2 == 0 { &a } else { &b }, &nodes);
        async move {
            let plan = one_on("n1", format!("i{n}"));
            store.place_instances("t1", nodes, &plan).await.unwrap()
        }
    }))
    .await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 5);
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| e == "full")
    );
    let counts = b.slot_counts("t1", &nodes).await.unwrap();
    assert_eq!(
        (
            counts.used.get("n1"),
            counts.capacity.get("n1"),
            counts.tenant_total
        ),
        (Some(&5), Some(&5), 5)
    );

    // A queued instance (on no node's slot): not onto the full n1, onto n2 once.
    let mut queued = InstanceRecord::sample("q1", "t1", "p1", "n1");
    queued.state = ControlState::Queued;
    a.insert_instances(&[queued]).await.unwrap();
    assert!(
        !a.claim_restore_slot("q1", "n1", 10).await.unwrap(),
        "n1 is full"
    );
    assert!(b.claim_restore_slot("q1", "n2", 11).await.unwrap());
    assert!(
        !a.claim_restore_slot("q1", "n2", 12).await.unwrap(),
        "no longer queued"
    );
    let counts = a.slot_counts("t1", &["n2".to_string()]).await.unwrap();
    assert_eq!(counts.used.get("n2"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_claims_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    claims(&format!(
        "sqlite://{}/control.db?mode=rwc",
        dir.path().display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_claims_on_postgres() {
    claims(&cloudphone_testkit::postgres::fresh_database()).await;
}
