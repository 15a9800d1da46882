//! The instance lifecycle rules over HTTP against a real control + node: an archived phone is
//! wiped by UnassignInstance (never orphaned) and streams again once prepared; UnassignInstance
//! with the host down is refused (62010) and nothing is handed out until the wipe happened;
//! BatchQueryStatus shows a viewer's stream (3); GetDeviceToken renews the same device; and no
//! operation in any state answers `9999` or a 5xx.

use std::path::Path;
use std::time::Duration;

use cloudphone_control::store::{SqlStore, Store};
use cloudphone_core::instance::{ALL_STATES, ControlState};
use cloudphone_testkit::fleet::{Fleet, error_code as code, order_sku};
use cloudphone_testkit::wait_for;
use serde_json::{Value, json};

use crate::support::{hello, kill_node, ok, query_status, row, run_in, start_viewer};

/// `(HTTP status, error_code)` of a refusal the lifecycle rules make.
const BEING_RESTORED: (u16, &str) = (200, "KOOPHONE.API.2005");
const ABNORMAL: (u16, &str) = (200, "KOOPHONE.API.62010");

fn bindings(user: &str, id: &str) -> Value {
    json!({"user_instances": [{"user_id": user, "instance_id": id}]})
}

async fn device_token(fleet: &Fleet, token: &str, id: &str) -> (u16, Value) {
    fleet
        .post(&format!("/v1/instances/{id}/auth"), token, &json!({}))
        .await
}

fn answer(got: (u16, Value)) -> (u16, String) {
    (got.0, code(&got.1).to_string())
}

/// Every `<id>.tar.gz` under the fleet's backup dir.
fn archives(dir: &Path, id: &str) -> usize {
    let Ok(tenants) = std::fs::read_dir(dir) else {
        return 0;
    };
    tenants
        .flatten()
        .filter(|t| t.path().join(format!("{id}.tar.gz")).is_file())
        .count()
}

/// A synthetic fleet with one running phone of acme's, assigned to `user-1` who wrote
/// `/data/x` in it: the fleet, acme's token and the phone's id.
async fn phone_of_user_1() -> (Fleet, String, String) {
    let fleet = Fleet::up("synthetic").await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let id = fleet.running_instances(&acme, 1).await.remove(0);
    ok(fleet
        .post("/v1/instances/assign", &acme, &bindings("user-1", &id))
        .await);
    run_in(&fleet, &acme, &id, "touch /data/x").await;
    (fleet, acme, id)
}

/// BatchBackup → GetDeviceToken (2005) → Unassign (wipes the archive) → BatchPrepare → the
/// phone is restored fresh, and GetDeviceToken streams it: BatchQueryStatus says 3 while a
/// viewer watches, and a second GetDeviceToken renews the same device without cutting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_phone_unassigned_comes_back_wiped_and_streams() {
    let (fleet, acme, id) = phone_of_user_1().await;

    let just_id = json!({"instance_ids": [id]});
    ok(fleet.post("/v1/instances/backup", &acme, &just_id).await);
    wait_for("the backup", Duration::from_secs(60), || async {
        (row(&fleet, &acme, &id).await["backup_status"] == 2).then_some(())
    })
    .await;
    let backups = fleet.path("backups");
    assert_eq!(archives(&backups, &id), 1);
    // A new user tries the phone right after the backup: a documented code, not 9999.
    assert_eq!(
        answer(device_token(&fleet, &acme, &id).await),
        (BEING_RESTORED.0, BEING_RESTORED.1.to_string())
    );

    // Unassign wipes the archive at once; the phone is not orphaned.
    ok(fleet
        .post("/v1/instances/unassign", &acme, &bindings("user-1", &id))
        .await);
    assert_eq!(archives(&backups, &id), 0, "the archive is wiped");
    let listed = row(&fleet, &acme, &id).await;
    assert_eq!(
        (
            listed["assign_user"].as_str(),
            listed["running_status"].as_i64()
        ),
        (Some(""), Some(1)),
        "unbound, still backed up: {listed}"
    );

    // Prepared for the next user: it comes back on the host, fresh.
    let prepared = ok(fleet
        .post_token_only(
            "/v1/instances/prepare",
            &acme,
            &json!({"user_id": "user-2", "instance_ids": [id]}),
        )
        .await);
    assert_eq!(prepared["data"]["status_list"][0]["status"], 1);
    wait_for("the restore", Duration::from_secs(60), || async {
        (row(&fleet, &acme, &id).await["running_status"] == 2).then_some(())
    })
    .await;
    let listing = run_in(&fleet, &acme, &id, "ls /data").await;
    assert!(
        !listing.split_whitespace().any(|f| f == "x"),
        "user-1's file is gone: {listing}"
    );
    assert_eq!(row(&fleet, &acme, &id).await["assign_user"], "user-2");
    assert_eq!(
        query_status(&fleet, &acme, &id).await,
        2,
        "nobody watches yet"
    );

    // It streams again: status 3 while a viewer holds a session.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (viewer, _) = start_viewer(&fleet, &acme, &id, async move {
        let _ = stop_rx.await;
    })
    .await;
    wait_for("status 3 (streaming)", Duration::from_secs(20), || async {
        (query_status(&fleet, &acme, &id).await == 3).then_some(())
    })
    .await;

    // A second GetDeviceToken for the same user and instance renews the same device: a new
    // token and a full `expired_time`, and the live stream is not cut.
    let first = ok(device_token(&fleet, &acme, &id).await)["data"].clone();
    let second = ok(device_token(&fleet, &acme, &id).await)["data"].clone();
    let signaling = &second["resource"]["rtc"]["ice_signaling"];
    assert_eq!(
        second["resource"]["device_id"],
        first["resource"]["device_id"]
    );
    assert_ne!(second["device_token"], first["device_token"]);
    assert_eq!(signaling["expired_time"], "3600");
    let url = signaling["signaling_url"].as_str().unwrap();
    let device = second["resource"]["device_id"].as_str().unwrap();
    let stale = hello(url, device, first["device_token"].as_str().unwrap()).await;
    assert_eq!(
        (&stale["type"], &stale["code"]),
        (&json!("error"), &json!("bad_token")),
        "the renewed grant replaced the old token: {stale}"
    );
    let fresh = hello(url, device, second["device_token"].as_str().unwrap()).await;
    assert_eq!(fresh["type"], "ready", "{fresh}");
    assert!(!viewer.is_finished(), "the renewal did not cut the stream");
    assert_eq!(query_status(&fleet, &acme, &id).await, 3);

    stop_tx.send(()).unwrap();
    viewer.await.unwrap();
    wait_for(
        "status 2 once the viewer left",
        Duration::from_secs(20),
        || async { (query_status(&fleet, &acme, &id).await == 2).then_some(()) },
    )
    .await;
}

/// UnassignInstance while the phone's host is down cannot wipe it: it is refused with 62010
/// and the binding stays, so nobody else gets the phone (Assign 2209, GetDeviceToken 62010).
/// Once the host is back, Unassign wipes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unassign_with_the_host_down_is_refused_until_it_can_wipe() {
    let (mut fleet, acme, id) = phone_of_user_1().await;

    kill_node(&mut fleet).await;
    let unassign = bindings("user-1", &id);
    let refused = answer(fleet.post("/v1/instances/unassign", &acme, &unassign).await);
    assert_eq!(refused, (ABNORMAL.0, ABNORMAL.1.to_string()));
    assert_eq!(
        row(&fleet, &acme, &id).await["assign_user"],
        "user-1",
        "still bound"
    );
    let taken = answer(
        fleet
            .post("/v1/instances/assign", &acme, &bindings("user-2", &id))
            .await,
    );
    assert_eq!(
        taken,
        (400, "KPAPI.2209".to_string()),
        "not handed to anyone else"
    );
    assert_eq!(
        answer(device_token(&fleet, &acme, &id).await),
        (ABNORMAL.0, ABNORMAL.1.to_string())
    );
    let reset = json!({"instance_ids": [id]});
    let refused = answer(fleet.post("/v1/instances/batch-reset", &acme, &reset).await);
    assert_eq!(refused, (ABNORMAL.0, ABNORMAL.1.to_string()));

    // The host comes back with the phone and its data; now the wipe happens.
    fleet.start_node();
    fleet.wait_node("up", Duration::from_secs(30)).await;
    wait_for(
        "the phone running again",
        Duration::from_secs(60),
        || async { (row(&fleet, &acme, &id).await["running_status"] == 2).then_some(()) },
    )
    .await;
    assert!(fleet.instance_data_dir(&id).join("x").exists());
    ok(fleet.post("/v1/instances/unassign", &acme, &unassign).await);
    wait_for("the wipe", Duration::from_secs(60), || async {
        let running = row(&fleet, &acme, &id).await["running_status"] == 2;
        (running && !fleet.instance_data_dir(&id).join("x").exists()).then_some(())
    })
    .await;
    assert_eq!(row(&fleet, &acme, &id).await["assign_user"], "");
}

/// One call of each of the 20 CloudDevice operations on `id`: (name, method, path, body).
fn operations(id: &str, task: &str) -> Vec<(&'static str, reqwest::Method, String, Option<Value>)> {
    use reqwest::Method as M;
    let ids = json!({"instance_ids": [id]});
    let one = json!({"instance_id": id});
    let install = json!({"fast_install": 1, "object_name": "com.example.app",
        "file_name": "app.apk", "object_version": "1.0", "object_size": 1, "biz_type": "apk",
        "content_type": "application/octet-stream", "content_md5": "00",
        "install_package_url": "http://127.0.0.1:9/app.apk", "instance_id_list": [id]});
    let user = |u: &str| json!({"user_instances": [{"user_id": u, "instance_id": id}]});
    vec![
        (
            "ListInstances",
            M::GET,
            "/v1/instances/batch-query?page_no=1&page_size=10".into(),
            None,
        ),
        ("BatchShowSku", M::GET, "/v1/instances/sku".into(), None),
        (
            "SyncCommand",
            M::POST,
            "/v1/instances/sync-command".into(),
            Some(json!({"command": "ls /data", "instance_ids": [id]})),
        ),
        (
            "AsyncCommand",
            M::POST,
            "/v1/instances/async-command".into(),
            Some(json!({"command": "ls /data", "instance_ids": [id]})),
        ),
        (
            "GetTask",
            M::GET,
            format!("/v1/instances/tasks/{task}"),
            None,
        ),
        (
            "BatchQueryStatus",
            M::POST,
            "/v1/instances/batch-query-status".into(),
            Some(ids.clone()),
        ),
        (
            "InstallApp",
            M::POST,
            "/v1/instances/app/install".into(),
            Some(install),
        ),
        (
            "SetVideoConfig",
            M::PUT,
            "/v1/instances/video-setting".into(),
            Some(crate::operations::video_setting(&[id.to_string()])),
        ),
        (
            "ShowProgress",
            M::POST,
            "/v1/instances/prepare-progress".into(),
            Some(json!({"user_id": "u-1", "instance_id": id})),
        ),
        (
            "AssignInstance",
            M::POST,
            "/v1/instances/assign".into(),
            Some(user("u-1")),
        ),
        (
            "GetDeviceToken",
            M::POST,
            format!("/v1/instances/{id}/auth"),
            None,
        ),
        (
            "StopInstancesStreaming",
            M::POST,
            "/v1/instances/streaming/stop".into(),
            Some(one.clone()),
        ),
        (
            "ReleaseInstancesSession",
            M::POST,
            "/v1/instances/session/release".into(),
            Some(one),
        ),
        (
            "BatchRebootInstance",
            M::POST,
            "/v1/instances/reboot".into(),
            Some(ids.clone()),
        ),
        (
            "UnassignInstance",
            M::POST,
            "/v1/instances/unassign".into(),
            Some(user("u-1")),
        ),
        (
            "BatchReset",
            M::POST,
            "/v1/instances/batch-reset".into(),
            Some(ids.clone()),
        ),
        (
            "BatchPrepareInstances",
            M::POST,
            "/v1/instances/prepare".into(),
            Some(json!({"user_id": "u-1", "instance_ids": [id]})),
        ),
        (
            "BatchBackupInstances",
            M::POST,
            "/v1/instances/backup".into(),
            Some(ids),
        ),
        (
            "CreateInstance",
            M::POST,
            "/v1/instances/create".into(),
            Some(serde_json::from_str(&order_sku("kp.synthetic.720p", 1)).unwrap()),
        ),
        (
            "DeleteInstance",
            M::POST,
            "/v1/instances/delete".into(),
            Some(json!({"instanceIdList": [id]})),
        ),
    ]
}

/// Every operation on an instance in every state control can hold, with its host up and then
/// down: never `9999`, never a 5xx. The states are set in the store before each call (a
/// backup or restore in flight cannot be held still over HTTP), so each call sees that state
/// whatever the previous call started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_operation_in_any_state_answers_9999() {
    let mut fleet = Fleet::up("synthetic").await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme, 2).await;
    let store = SqlStore::connect(&fleet.store_url).await.unwrap();
    let body = ok(fleet
        .post(
            "/v1/instances/async-command",
            &acme,
            &json!({"command": "ls", "instance_ids": [ids[0]]}),
        )
        .await);
    let task = body["data"]["task_id"].as_str().unwrap().to_string();

    let mut failures = Vec::new();
    for host in ["up", "down"] {
        if host == "down" {
            kill_node(&mut fleet).await;
        }
        // The first instance goes through every state but is never deleted; the second is
        // the one DeleteInstance removes, once, at the end.
        let id = &ids[0];
        for state in ALL_STATES {
            for (name, method, path, body) in operations(id, &task) {
                if name == "DeleteInstance" {
                    continue;
                }
                store
                    .set_instance_state(id, state, "", cloudphone_control::unix_ms())
                    .await
                    .unwrap();
                let body = body.map(|b| b.to_string());
                let (status, answer) = fleet.call(method, &path, &acme, body.as_deref()).await;
                if status >= 500 || code(&answer) == "KOOPHONE.API.9999" {
                    failures.push(format!(
                        "{name} on a {state} instance, host {host}: {status} {answer}"
                    ));
                }
            }
        }
    }
    for state in [ControlState::RUNNING, ControlState::BackedUp] {
        store
            .set_instance_state(&ids[1], state, "", cloudphone_control::unix_ms())
            .await
            .unwrap();
    }
    let (name, method, path, body) = operations(&ids[1], &task).pop().unwrap();
    let (status, answer) = fleet
        .call(method, &path, &acme, body.map(|b| b.to_string()).as_deref())
        .await;
    if status >= 500 || code(&answer) == "KOOPHONE.API.9999" {
        failures.push(format!("{name}, host down: {status} {answer}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
