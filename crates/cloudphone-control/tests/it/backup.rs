//! BatchBackupInstances, BatchPrepareInstances and ShowProgress against a real control + node
//! deployment (node capacity 4): the archive and the freed slot, the prepare queue waiting for
//! capacity, the restored data, and the operations' error codes with their HTTP statuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudphone_testkit::fleet::{Fleet, error_code as code, order_sku};
use cloudphone_testkit::wait_for;
use serde_json::{Value, json};

use crate::support::{
    INVALID, NO_REQUEST_ID, NOT_YOURS, Sent, check_refusals, ok, query_status, row, run_in,
};

/// The fleet's node holds this many instances.
const NODE_CAPACITY: u32 = 4;

/// ShowProgress' `data` for `user`'s instance `id`; the call must succeed.
async fn progress(fleet: &Fleet, token: &str, user: &str, id: &str) -> Value {
    let request = json!({"user_id": user, "instance_id": id});
    let path = "/v1/instances/prepare-progress";
    ok(fleet.post_token_only(path, token, &request).await)["data"].clone()
}

/// Orders one more instance; returns the HTTP status, body and the new id (if any).
async fn order_one(fleet: &Fleet, token: &str) -> (u16, Value, Option<String>) {
    let (status, body) = fleet
        .call(
            reqwest::Method::POST,
            "/v1/instances/create",
            token,
            Some(&order_sku("kp.synthetic.720p", 1)),
        )
        .await;
    let id = body["data"]["instanceInfos"][0]["instanceId"]
        .as_str()
        .map(str::to_string);
    (status, body, id)
}

async fn wait_row_running(fleet: &Fleet, token: &str, id: &str) {
    wait_for(
        &format!("{id} running"),
        Duration::from_secs(60),
        || async { (row(fleet, token, id).await["running_status"] == 2).then_some(()) },
    )
    .await;
}

/// Every `<id>.tar.gz` under the fleet's backup dir.
fn archives(dir: &Path, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(tenants) = std::fs::read_dir(dir) else {
        return found;
    };
    for tenant in tenants.flatten() {
        let path = tenant.path().join(format!("{id}.tar.gz"));
        if path.is_file() {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_prepare_restore_and_the_queue() {
    let (fleet, acme, other, ids) = crate::operations::setup(NODE_CAPACITY).await;
    let (target, neighbour) = (ids[0].clone(), ids[1].clone());
    let backups = fleet.path("backups");

    run_in(&fleet, &acme, &target, "touch /data/x").await;
    assert!(fleet.instance_data_dir(&target).join("x").exists());
    let (status, body, _) = order_one(&fleet, &acme).await;
    assert_eq!(
        (status, code(&body)),
        (200, "KOOPHONE.API.40010"),
        "the node is full"
    );

    // Backup errors: another tenant, an unknown id, no request id, a body without ids.
    let with_id = Sent::WithRequestId;
    let just_target = json!({"instance_ids": [target]});
    let with_unknown = json!({"instance_ids": [target, "nosuch"]});
    let no_ids = json!({"user_id": "u"});
    check_refusals(
        &fleet,
        "/v1/instances/backup",
        &[
            (&other, with_id, &just_target, NOT_YOURS),
            (&acme, with_id, &with_unknown, NOT_YOURS),
            (&acme, Sent::TokenOnly, &just_target, NO_REQUEST_ID),
            (&acme, with_id, &no_ids, INVALID),
        ],
    )
    .await;
    assert_eq!(query_status(&fleet, &acme, &target).await, 2, "unchanged");

    // The seed example's body: user_id + instance_id.
    let (status, body) = fleet
        .post(
            "/v1/instances/backup",
            &acme,
            &json!({"user_id": "1008600000104285462", "instance_id": target}),
        )
        .await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"error_code": "0", "error_msg": "OK"}))
    );
    wait_for("the backup", Duration::from_secs(60), || async {
        (query_status(&fleet, &acme, &target).await == 0).then_some(())
    })
    .await;
    let listed = row(&fleet, &acme, &target).await;
    assert_eq!(
        (
            listed["backup_status"].as_i64(),
            listed["running_status"].as_i64()
        ),
        (Some(2), Some(1)),
        "{listed}"
    );
    assert_eq!(listed["backup_time"].as_str().map(str::len), Some(19));
    assert!(
        !fleet.instance_data_dir(&target).exists(),
        "the node released the instance"
    );
    let archive = archives(&backups, &target);
    assert_eq!(archive.len(), 1, "one archive under {}", backups.display());
    assert!(std::fs::metadata(&archive[0]).unwrap().len() > 0);
    // Not bound to user-1 yet.
    let by_user = |user: &str| json!({"user_id": user, "instance_id": target});
    let refusal = (
        acme.as_str(),
        Sent::TokenOnly,
        &by_user("user-1"),
        NOT_YOURS,
    );
    check_refusals(&fleet, "/v1/instances/prepare-progress", &[refusal]).await;

    // The slot is free: a new instance fits, and fills the node again.
    let (status, body, filler) = order_one(&fleet, &acme).await;
    assert_eq!((status, code(&body)), (200, "0"), "{body}");
    let filler = filler.unwrap();
    wait_row_running(&fleet, &acme, &filler).await;

    // Prepare errors: another tenant, another user's instance (the neighbour is user-2's), a
    // bad body.
    ok(fleet
        .post(
            "/v1/instances/assign",
            &acme,
            &json!({"user_instances": [{"user_id": "user-2", "instance_id": neighbour}]}),
        )
        .await);
    let token_only = Sent::TokenOnly;
    let for_user_1 = json!({"user_id": "user-1", "instance_ids": [target]});
    let bound_elsewhere = json!({"user_id": "user-1", "instance_ids": [target, neighbour]});
    let no_user = json!({"instance_ids": [target]});
    check_refusals(
        &fleet,
        "/v1/instances/prepare",
        &[
            (&other, token_only, &for_user_1, NOT_YOURS),
            (&acme, token_only, &bound_elsewhere, (400, "KPAPI.2209")),
            (&acme, token_only, &no_user, INVALID),
        ],
    )
    .await;
    assert_eq!(
        row(&fleet, &acme, &target).await["assign_user"],
        "",
        "a refused prepare binds nothing"
    );

    // Prepare with the node full: the seed example repeats the id; the running neighbour is ready.
    let body = ok(fleet
        .post_token_only(
            "/v1/instances/prepare",
            &acme,
            &json!({"user_id": "user-2", "instance_ids": [target, target, neighbour]}),
        )
        .await);
    assert_eq!(
        body["data"]["status_list"],
        json!([{"instance_id": target, "status": 1}, {"instance_id": neighbour, "status": 0}]),
    );
    let data = progress(&fleet, &acme, "user-2", &target).await;
    assert_eq!(data["status"], 1, "queued: {data}");
    assert!(data["waitingCount"].as_i64().unwrap() >= 1, "{data}");
    let data = progress(&fleet, &acme, "user-2", &neighbour).await;
    assert_eq!(data, json!({"status": 0, "waitingCount": 0}));
    // Another user, another tenant.
    check_refusals(
        &fleet,
        "/v1/instances/prepare-progress",
        &[
            (&acme, token_only, &by_user("user-9"), NOT_YOURS),
            (&other, token_only, &by_user("user-2"), NOT_YOURS),
        ],
    )
    .await;
    // Still no room a few worker rounds later: still waiting, first in line. (A quiet window,
    // not an expiry: it gives the worker's 1 s rounds three chances to admit it wrongly.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let data = progress(&fleet, &acme, "user-2", &target).await;
    assert_eq!(data, json!({"status": 1, "waitingCount": 1}));

    // A slot frees: the queued instance is restored (status 1 or 2 on the way, then 0).
    ok(fleet
        .post_token_only(
            "/v1/instances/delete",
            &acme,
            &json!({"instanceIdList": [filler]}),
        )
        .await);
    let mut seen: Vec<i64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let data = progress(&fleet, &acme, "user-2", &target).await;
        let status = data["status"].as_i64().unwrap_or(-99);
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not restored in time: progress went {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.iter().all(|s| [0, 1, 2].contains(s)),
        "progress went {seen:?}"
    );
    let listing = run_in(&fleet, &acme, &target, "ls /data").await;
    assert!(
        listing.split_whitespace().any(|f| f == "x"),
        "the file is back: {listing}"
    );
    assert!(fleet.instance_data_dir(&target).join("x").exists());
    let listed = row(&fleet, &acme, &target).await;
    assert_eq!(
        (
            listed["restore_status"].as_i64(),
            listed["running_status"].as_i64(),
            listed["assign_user"].as_str()
        ),
        (Some(2), Some(2), Some("user-2")),
        "{listed}"
    );
    assert!(
        archives(&backups, &target).is_empty(),
        "the stale archive is gone"
    );
    assert_eq!(query_status(&fleet, &acme, &target).await, 2);
    eprintln!("progress while restoring: {seen:?}");
}

/// An android instance's phone is its device, which the node cannot archive:
/// BatchBackupInstances refuses it with `1000` (400), archives nothing and leaves it running.
/// The node drives the adb double the node's own tests use (a device kept in files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_backup_is_refused() {
    let device = tempfile::tempdir().unwrap();
    let state = device.path();
    std::fs::write(state.join("system"), "android\ncom.android.contacts\n").unwrap();
    std::fs::write(state.join("third"), "").unwrap();
    std::fs::create_dir_all(state.join("sdcard")).unwrap();
    let double = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cloudphone-node/tests/it/support/adb-double.sh");
    let adb = state.join("adb");
    std::os::unix::fs::symlink(double, &adb).unwrap();
    let extra = format!(
        "[android]\nadb = \"{}\"\nserials = [\"R58M00009\"]\n",
        adb.display()
    );
    let fleet = Fleet::up_with("android", "", &extra).await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme, 1).await;

    let order = json!({ "instance_ids": ids });
    let (status, body) = fleet.post("/v1/instances/backup", &acme, &order).await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.1000"), "{body}");
    assert!(archives(&fleet.path("backups"), &ids[0]).is_empty());
    assert_eq!(row(&fleet, &acme, &ids[0]).await["running_status"], 2);
}
