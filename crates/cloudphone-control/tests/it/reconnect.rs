//! Issue 16's reconnect, through the API: GetDeviceToken's `renew` extension
//! (docs/api-notes.md) extends a live token without changing it, refuses every token that is
//! not the caller's live one with the spec's codes, and a token outlives a restart of its node
//! (the node keeps its grants in its state dir).

use std::time::Duration;

use cloudphone_testkit::fleet::{Fleet, error_code as code};
use cloudphone_testkit::wait_for;
use serde_json::{Value, json};

use crate::operations::setup;
use crate::roles::token;
use crate::support::hello;

/// The expiry the node keeps on disk for `device`.
fn expiry_on_node(fleet: &Fleet, device: &str) -> i64 {
    let path = fleet.path("node-state").join("sessions/grants.json");
    let json: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["device_id"] == device)
        .and_then(|g| g["expires_at_unix_ms"].as_i64())
        .expect("the device's grant on the node's disk")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_extends_the_same_token_and_a_node_restart_keeps_it() {
    let (mut fleet, acme, other, ids) = setup(1).await;
    let path = format!("/v1/instances/{}/auth", ids[0]);
    let (url, device, first) = token(&fleet, &acme, &ids[0], &json!({})).await;
    let before = expiry_on_node(&fleet, &device);

    // Renewed: the same token and device, a later expiry on the node.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, renewed_device, renewed) =
        token(&fleet, &acme, &ids[0], &json!({"renew": first})).await;
    assert_eq!((&renewed_device, &renewed), (&device, &first));
    assert!(expiry_on_node(&fleet, &device) > before);
    assert_eq!(hello(&url, &device, &first).await["type"], "ready");

    // Another tenant: our instance is not theirs (1001, 401), and our token is not a live
    // token of their device on their own instance (1000, 400).
    let (status, body) = fleet
        .post_token_only(&path, &other, &json!({"renew": first}))
        .await;
    assert_eq!((status, code(&body)), (401, "KOOPHONE.API.1001"), "{body}");
    let theirs = fleet.running_instances(&other, 1).await;
    let (status, body) = fleet
        .post_token_only(
            &format!("/v1/instances/{}/auth", theirs[0]),
            &other,
            &json!({"renew": first}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.1000"), "{body}");

    // A token replaced by a new GetDeviceToken, one of the other role, one never issued, or
    // something that is no token at all: 1000, and nothing is made.
    let (_, _, newest) = token(&fleet, &acme, &ids[0], &json!({})).await;
    for bad in [
        json!({"renew": first}),
        json!({"renew": newest, "role": "observer"}),
        json!({"renew": "0123456789abcdef0123456789abcdef"}),
        json!({"renew": "not-a-token"}),
        json!({"renew": 42}),
    ] {
        let (status, body) = fleet.post_token_only(&path, &acme, &bad).await;
        assert_eq!(
            (status, code(&body)),
            (400, "KOOPHONE.API.1000"),
            "{bad}: {body}"
        );
    }
    assert_eq!(hello(&url, &device, &first).await["code"], "bad_token");

    // The node restarts: the newest token is admitted again without a new GetDeviceToken.
    fleet.node = None;
    fleet.start_node();
    fleet.wait_node("up", Duration::from_secs(30)).await;
    let answer = wait_for("the token admitted again", Duration::from_secs(60), || {
        let url = url.clone();
        let (device, newest) = (device.clone(), newest.clone());
        async move {
            let answer = hello(&url, &device, &newest).await;
            (answer["code"] != "not_running").then_some(answer)
        }
    })
    .await;
    assert_eq!(answer["type"], "ready", "{answer}");
}
