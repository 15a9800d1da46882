//! GetDeviceToken's optional role (issue 16, an extension in docs/api-notes.md): an observer's
//! token reaches the node as a view-only grant beside the owner's, a role spelled otherwise is
//! the spec's parameter error, another tenant's instance stays refused, and a phone streams to
//! ten viewers at most.

use cloudphone_testkit::fleet::{Fleet, error_code as code};
use serde_json::{Value, json};

use crate::operations::setup;
use crate::support::{ok, send_hello};

/// GetDeviceToken for `id` with `body`: (signaling URL, device id, token).
pub(crate) async fn token(
    fleet: &Fleet,
    tenant: &str,
    id: &str,
    body: &Value,
) -> (String, String, String) {
    let body = ok(fleet
        .post_token_only(&format!("/v1/instances/{id}/auth"), tenant, body)
        .await);
    let data = &body["data"];
    let text = |v: &Value| v.as_str().unwrap().to_string();
    (
        text(&data["resource"]["rtc"]["ice_signaling"]["signaling_url"]),
        text(&data["resource"]["device_id"]),
        text(&data["device_token"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_tokens_carry_a_role_to_the_node_and_cap_the_viewers() {
    let (fleet, acme, other, ids) = setup(1).await;
    let path = format!("/v1/instances/{}/auth", ids[0]);

    // No body at all (the seed's call) and no role are both today's owner token.
    let (status, body) = fleet.call(reqwest::Method::POST, &path, &acme, None).await;
    assert_eq!(status, 200, "{body}");
    let (url, owner_device, owner_token) = token(&fleet, &acme, &ids[0], &json!({})).await;
    assert_eq!(
        body["data"]["resource"]["device_id"], owner_device,
        "one owner device per user and instance"
    );
    let (_, explicit_device, _) = token(&fleet, &acme, &ids[0], &json!({"role": "owner"})).await;
    assert_eq!(explicit_device, owner_device);
    // The renewals above replaced the owner token: take the newest.
    let (_, _, owner_token_now) = token(&fleet, &acme, &ids[0], &json!({})).await;
    assert_ne!(owner_token, owner_token_now);

    // An observer token is a device of its own: it does not renew (and so end) the owner's.
    let (_, observer_device, observer_token) =
        token(&fleet, &acme, &ids[0], &json!({"role": "observer"})).await;
    assert_ne!(observer_device, owner_device);
    let (owner_ws, ready) = send_hello(&url, &owner_device, &owner_token_now).await;
    assert_eq!(
        (ready["type"].as_str(), ready["role"].as_str()),
        (Some("ready"), Some("owner")),
        "{ready}"
    );
    let (observer_ws, ready) = send_hello(&url, &observer_device, &observer_token).await;
    assert_eq!(
        (ready["type"].as_str(), ready["role"].as_str()),
        (Some("ready"), Some("observer")),
        "{ready}"
    );

    // A role spelled otherwise is the spec's parameter error (1000, 400), never a 5xx, and no
    // token is made.
    for bad in [
        json!({"role": "admin"}),
        json!({"role": "Owner"}),
        json!({"role": 1}),
        json!("observer"),
        json!([{"role": "observer"}]),
    ] {
        let (status, body) = fleet.post_token_only(&path, &acme, &bad).await;
        assert_eq!(
            (status, code(&body)),
            (400, "KOOPHONE.API.1000"),
            "{bad}: {body}"
        );
    }
    // Another tenant gets no token for our instance, whatever the role.
    let (status, body) = fleet
        .post_token_only(&path, &other, &json!({"role": "observer"}))
        .await;
    assert_eq!((status, code(&body)), (401, "KOOPHONE.API.1001"));

    // Ten viewers at most, owners and observers together: two are watching, eight more are
    // admitted, the eleventh hears `too_many_viewers` at hello.
    let mut watching = vec![owner_ws, observer_ws];
    for i in 0..8 {
        let (device, token) = if i % 2 == 0 {
            (&owner_device, &owner_token_now)
        } else {
            (&observer_device, &observer_token)
        };
        let (ws, ready) = send_hello(&url, device, token).await;
        assert_eq!(ready["type"], "ready", "viewer {}: {ready}", i + 3);
        watching.push(ws);
    }
    let (_, refused) = send_hello(&url, &observer_device, &observer_token).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("too_many_viewers")),
        "{refused}"
    );
    drop(watching);
}
