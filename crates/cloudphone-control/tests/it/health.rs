//! `/healthz` tells whether control can serve (its database answers) and `/metrics` counts
//! requests by route: both against the real binary on a real PostgreSQL database that is made
//! unreachable and reachable again.

use std::time::{Duration, Instant};

use cloudphone_testkit::fleet::Fleet;
use cloudphone_testkit::{postgres, wait_for};
use serde_json::Value;

async fn healthz(fleet: &Fleet) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = fleet
        .http
        .get(format!("{}/healthz", fleet.api))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap();
    (status, body, started.elapsed())
}

#[tokio::test]
async fn healthz_reports_the_database_and_answers_503_while_it_is_unreachable() {
    let db = postgres::fresh_database();
    let mut fleet = Fleet::new(Some(db.clone()), "synthetic");
    fleet.start_control();
    fleet.wait_healthy(&fleet.api.clone()).await;

    let (status, body, _) = healthz(&fleet).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["database"], "ok", "{body}");
    assert_eq!(body["nodes_up"], 0, "{body}");

    postgres::set_connections_allowed(&db, false);
    let (status, body, took) = healthz(&fleet).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_ne!(body["database"], "ok", "{body}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    // Unauthenticated: nothing about where the database is or what the driver said.
    let text = body.to_string();
    for secret in ["postgres", "127.0.0.1", "t_"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }

    postgres::set_connections_allowed(&db, true);
    wait_for("healthz 200 again", Duration::from_secs(10), || async {
        let (status, _, _) = healthz(&fleet).await;
        (status == 200).then_some(())
    })
    .await;

    let metrics = fleet
        .http
        .get(format!("{}/metrics", fleet.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("cloudphone_http_requests_total{")
                && l.contains(r#"route="/healthz""#)
                && l.contains(r#"status="503""#)
        })
        .unwrap_or_else(|| panic!("no 503 healthz count:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        metrics.contains("cloudphone_control_nodes_up 0"),
        "{metrics}"
    );
}
