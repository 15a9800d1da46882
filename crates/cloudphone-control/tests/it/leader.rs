//! Control replicas on one PostgreSQL share one leader for the fleet-wide jobs, reach every
//! node whichever replica it joined through, and count login failures together (issue 17).

use std::time::{Duration, Instant};

use cloudphone_control::store::{self, Store, TokenRecord};
use cloudphone_testkit::fleet::{Fleet, error_code, order_sku};
use cloudphone_testkit::{postgres, wait_for};
use serde_json::Value;

const PASSWORD: &str = "correct-horse-1";
/// The tests' `[replicas] leader_retry_ms`.
const RETRY_MS: u64 = 500;
/// The documented bound for a new leader after the old one's process died on a live host:
/// one retry period plus one attempt's timeout (`leader::Timing::after_process_death`).
const HANDOVER_BOUND: Duration = Duration::from_millis(RETRY_MS + 2_000);
/// The tests' `[replicas] registry_refresh_ms`.
const REFRESH_MS: u64 = 500;

/// A fleet on a fresh PostgreSQL with the tests' replica timings and tenant `acme`.
fn fleet_on_postgres() -> Fleet {
    let mut fleet = Fleet::new(Some(postgres::fresh_database()), "synthetic");
    fleet.control_extra =
        format!("[replicas]\nleader_retry_ms = {RETRY_MS}\nregistry_refresh_ms = {REFRESH_MS}\n");
    fleet
}

/// `/healthz`'s `leader` of the control at `api`; `None` while it does not answer.
async fn leads(fleet: &Fleet, api: &str) -> Option<bool> {
    fleet.get_json(&format!("{api}/healthz")).await?["leader"].as_bool()
}

/// The `cloudphone_control_leader` gauge on `/metrics` of the control at `api`.
async fn leader_gauge(fleet: &Fleet, api: &str) -> String {
    let text = fleet
        .http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("cloudphone_control_leader "))
        .unwrap_or_else(|| panic!("no leader gauge:\n{text}"))
        .to_string()
}

/// Two replicas: exactly one leads (`/healthz` and `/metrics` say which), and only it runs the
/// token purge: an expired token stays while the leader lives. SIGKILL the leader: the other
/// replica leads within [`HANDOVER_BOUND`] and purges the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_s_jobs_move_to_the_other_replica_within_the_bound() {
    let mut fleet = fleet_on_postgres();
    let tenant = fleet.create_tenant("acme", PASSWORD);
    fleet.start_control();
    let first = fleet.api.clone();
    fleet.wait_healthy(&first).await;
    wait_for(
        "the first replica leads",
        Duration::from_secs(20),
        || async { leads(&fleet, &first).await.filter(|l| *l) },
    )
    .await;
    // Written after the leader's purge at its start (one DELETE the moment it leads; a retry
    // period leaves it ample time) and before the follower starts: a follower purging (at its
    // start, as a leader does) would remove it.
    tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
    let store = store::open(&fleet.store_url).await.unwrap();
    let expired = TokenRecord {
        token_sha256: "0".repeat(64),
        user_id: tenant["user_id"].as_str().unwrap().into(),
        tenant_id: tenant["tenant_id"].as_str().unwrap().into(),
        project_id: None,
        issued_at_ms: 1,
        expires_at_ms: 2,
    };
    store.insert_token(&expired).await.unwrap();
    let second = fleet.add_control("control-2").await;
    assert_eq!(leads(&fleet, &second.api).await, Some(false));
    assert_eq!(leads(&fleet, &first).await, Some(true));
    assert_eq!(
        leader_gauge(&fleet, &first).await,
        "cloudphone_control_leader 1"
    );
    assert_eq!(
        leader_gauge(&fleet, &second.api).await,
        "cloudphone_control_leader 0"
    );

    // Several of the follower's retry periods: it stays a follower and purges nothing.
    tokio::time::sleep(Duration::from_millis(4 * RETRY_MS)).await;
    assert_eq!(leads(&fleet, &second.api).await, Some(false));
    assert!(
        store
            .find_token(&expired.token_sha256)
            .await
            .unwrap()
            .is_some()
    );

    let killed_at = Instant::now();
    fleet
        .control
        .as_mut()
        .unwrap()
        .stop_with(nix::sys::signal::Signal::SIGKILL);
    wait_for("the second replica leads", HANDOVER_BOUND * 3, || async {
        leads(&fleet, &second.api).await.filter(|l| *l)
    })
    .await;
    let handover = killed_at.elapsed();
    eprintln!("leader hand-over after SIGKILL: {handover:?} (bound {HANDOVER_BOUND:?})");
    assert!(handover <= HANDOVER_BOUND, "took {handover:?}");
    assert_eq!(
        leader_gauge(&fleet, &second.api).await,
        "cloudphone_control_leader 1"
    );
    wait_for(
        "the new leader purges the expired token",
        Duration::from_secs(10),
        || async {
            store
                .find_token(&expired.token_sha256)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "purged by the new leader {:?} after the kill",
        killed_at.elapsed()
    );
}

/// Replica B starts first; then a node joins through replica A only (its `[control]
/// endpoint` is A's). Within the refresh period B dials it: an order through B is placed on
/// it, and GetDeviceToken through B (a call B makes to the node) answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joined_through_one_replica_is_reached_through_another() {
    let mut fleet = fleet_on_postgres();
    fleet.create_tenant("acme", PASSWORD);
    fleet.start_control();
    let first = fleet.api.clone();
    fleet.wait_healthy(&first).await;
    let second = fleet.add_control("control-2").await;
    fleet.start_node();
    fleet.wait_node("up", Duration::from_secs(30)).await;
    let joined = Instant::now();

    // From here every call goes through B.
    fleet.api = second.api.clone();
    let token = fleet.login("acme", PASSWORD).await;
    let ordered = wait_for(
        "an order through B is placed",
        Duration::from_secs(30),
        || async {
            let (status, body) = fleet
                .call(
                    reqwest::Method::POST,
                    "/v1/instances/create",
                    &token,
                    Some(&order_sku("kp.synthetic.720p", 1)),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            match error_code(&body) {
                "0" => Some(body),
                // No node up for B yet.
                "KOOPHONE.API.3002" | "KOOPHONE.API.40010" => None,
                other => panic!("{other}: {body}"),
            }
        },
    )
    .await;
    let reached = joined.elapsed();
    eprintln!("B placed on the node {reached:?} after it joined through A");
    assert!(
        reached <= Duration::from_millis(REFRESH_MS + 2_000),
        "took {reached:?}"
    );
    let id = ordered["data"]["instanceInfos"][0]["instanceId"]
        .as_str()
        .unwrap()
        .to_string();
    fleet
        .wait_running_status(&token, 2, 1, Duration::from_secs(60))
        .await;
    let (status, body): (u16, Value) = fleet
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{id}/auth"),
            &token,
            Some("{}"),
        )
        .await;
    assert_eq!((status, error_code(&body)), (200, "0"), "{body}");
    fleet.api = first;
}

/// One login attempt of `acme`'s `dev` with `password` at the control at `api`; the status.
async fn attempt(fleet: &Fleet, api: &str, password: &str) -> u16 {
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": "dev", "password": password, "domain": {"name": "acme"}}}},
        "scope": {"project": {"name": "cn-north-7"}}}});
    fleet
        .http
        .post(format!("{api}/v3/auth/tokens"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// With 3 free failures, 4 wrong passwords sent alternately to two replicas lock the user as 4
/// to one process would: the right password is then refused with 429 on both. Counted per
/// replica, each would have seen 2 and let it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_spread_over_two_replicas_lock_the_user_as_one_process_would() {
    let mut fleet = fleet_on_postgres();
    // Appended to the fleet's `[iam]` section: a lock long enough to outlast the test.
    fleet.control_extra = format!(
        "login_free_failures = 3\nlogin_backoff_base_ms = 600000\n{}",
        fleet.control_extra
    );
    fleet.create_tenant("acme", PASSWORD);
    fleet.start_control();
    let first = fleet.api.clone();
    fleet.wait_healthy(&first).await;
    let second = fleet.add_control("control-2").await;
    let apis = [first.as_str(), second.api.as_str()];
    for n in 0..4 {
        assert_eq!(
            attempt(&fleet, apis[n % 2], "wrong-password").await,
            401,
            "attempt {n}"
        );
    }
    for api in apis {
        assert_eq!(attempt(&fleet, api, PASSWORD).await, 429, "{api}");
    }
}

/// The shared request budget at the store: 20 concurrent requests of one key through two
/// pools (two replicas) into a window of 5 count exactly 5; the next window starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_budget_counted_in_postgres_holds_across_two_pools() {
    use cloudphone_control::store::LimitStore;
    let url = postgres::fresh_database();
    let a = store::open(&url).await.unwrap();
    a.migrate().await.unwrap();
    let b = store::open(&url).await.unwrap();
    let allowed = futures::future::join_all((0..20).map(|n| {
        let pool = if n % 2 == 0 { &a } else { &b };
        async move { pool.count_request("live:AK1", 60_000, 5).await.unwrap() }
    }))
    .await;
    assert_eq!(allowed.iter().filter(|a| **a).count(), 5);
    assert!(b.count_request("live:AK1", 120_000, 5).await.unwrap());
    assert!(a.count_request("live:AK2", 60_000, 5).await.unwrap());
}
