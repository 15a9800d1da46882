//! One test per tenant API operation, each against a real control + node deployment: the seeds'
//! request shape, the documented response shape, the effect on the node, and the operation's
//! error codes with their HTTP statuses.

use std::time::Duration;

use cloudphone_testkit::fleet::{Fleet, error_code as code};
use cloudphone_testkit::wait_for;
use serde_json::{Value, json};

use crate::support::{
    INVALID, NO_REQUEST_ID, NOT_YOURS, Sent, check_refusals, get, hello, kill_node,
    list_with_request_id, ok,
};

/// A deployment with one running synthetic instance for `acme`, and a token for each tenant.
pub(crate) async fn setup(count: u32) -> (Fleet, String, String, Vec<String>) {
    let fleet = Fleet::up("synthetic").await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let other = fleet.login("other", "correct-horse-2").await;
    let ids = fleet.running_instances(&acme, count).await;
    (fleet, acme, other, ids)
}

async fn sync(fleet: &Fleet, token: &str, command: &str, ids: &[String]) -> (u16, Value) {
    fleet
        .post(
            "/v1/instances/sync-command",
            token,
            &json!({"command": command, "instance_ids": ids}),
        )
        .await
}

/// SyncCommand's result for the first instance; the call itself answers 200.
async fn result_of(fleet: &Fleet, token: &str, command: &str, ids: &[String]) -> Value {
    let (status, body) = sync(fleet, token, command, ids).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["cmd_results"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_command() {
    let (fleet, acme, other, ids) = setup(1).await;
    // Runs in the instance's sandbox: /data is the instance's own data dir.
    let body = ok(sync(&fleet, &acme, "touch /data/hello", &ids).await);
    assert_eq!(body["data"]["cmd_results"][0]["status"], 2, "{body}");
    assert!(
        fleet.instance_data_dir(&ids[0]).join("hello").exists(),
        "the file is in the instance's data dir"
    );
    let result = result_of(&fleet, &acme, "ls /data", &ids).await;
    assert!(result["execute_msg"].as_str().unwrap().contains("hello"));

    // A failing command: status -1, its output kept.
    let result = result_of(&fleet, &acme, "ls /system", &ids).await;
    assert_eq!(
        (result["status"].as_i64(), result["error_code"].as_str()),
        (Some(-1), Some("CPS.0191"))
    );
    assert!(
        result["execute_msg"]
            .as_str()
            .unwrap()
            .contains("No such file"),
        "{result}"
    );
    // Output is capped at 1024 bytes.
    let result = result_of(&fleet, &acme, "seq 1 100000", &ids).await;
    assert_eq!(result["execute_msg"].as_str().unwrap().len(), 1024);

    // The charset and size limits, another tenant, a missing request id.
    let command = |command: &str| json!({"command": command, "instance_ids": ids});
    let with_id = Sent::WithRequestId;
    check_refusals(
        &fleet,
        "/v1/instances/sync-command",
        &[
            (&acme, with_id, &command("ls; rm -rf /data"), INVALID),
            (&acme, with_id, &command("echo $HOME"), INVALID),
            (
                &acme,
                with_id,
                &command("cat /data/hello > /data/x"),
                INVALID,
            ),
            (&acme, with_id, &command(&"a".repeat(1025)), INVALID),
            (&other, with_id, &command("touch /data/intruder"), NOT_YOURS),
            (&acme, Sent::TokenOnly, &command("ls"), NO_REQUEST_ID),
            (&acme, with_id, &json!({"command": 5}), INVALID),
        ],
    )
    .await;
    assert!(
        !fleet.instance_data_dir(&ids[0]).join("intruder").exists(),
        "another tenant changed nothing"
    );

    // The instance's host goes away: the command cannot run, status -1 with 62010.
    let mut fleet = fleet;
    kill_node(&mut fleet).await;
    let result = result_of(&fleet, &acme, "ls /data", &ids).await;
    assert_eq!(
        (result["status"].as_i64(), result["error_code"].as_str()),
        (Some(-1), Some("KOOPHONE.API.62010")),
        "the host is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_command_and_get_task() {
    let (fleet, acme, other, ids) = setup(2).await;
    let body = ok(fleet
        .post(
            "/v1/instances/async-command",
            &acme,
            &json!({"command": "sleep 1", "instance_ids": ids}),
        )
        .await);
    let task_id = body["data"]["task_id"].as_str().unwrap().to_string();
    assert_eq!(body["data"]["cmd_jobs"].as_array().unwrap().len(), 2);

    let path = format!("/v1/instances/tasks/{task_id}");
    let (_, first) = get(&fleet, &path, &acme).await;
    assert_eq!(
        first["data"]["jobs"][0]["status"], 1,
        "queued or running at first: {first}"
    );
    let done = wait_for("jobs to finish", Duration::from_secs(20), || async {
        let (_, body) = get(&fleet, &path, &acme).await;
        let jobs = body["data"]["jobs"].as_array()?.clone();
        jobs.iter().all(|j| j["status"] == 2).then_some(body)
    })
    .await;
    assert_eq!(code(&done), "0");
    // The result is kept.
    let (_, again) = get(&fleet, &path, &acme).await;
    assert_eq!(again["data"]["jobs"], done["data"]["jobs"]);

    // A failing job, an unknown task, another tenant's task.
    let (_, body) = fleet
        .post(
            "/v1/instances/async-command",
            &acme,
            &json!({"command": "ls /nope", "instance_ids": [ids[0]]}),
        )
        .await;
    let failing = format!(
        "/v1/instances/tasks/{}",
        body["data"]["task_id"].as_str().unwrap()
    );
    wait_for("the job to fail", Duration::from_secs(20), || async {
        let (_, body) = get(&fleet, &failing, &acme).await;
        (body["data"]["jobs"][0]["status"] == -1).then_some(())
    })
    .await;
    let (status, body) = get(&fleet, "/v1/instances/tasks/no-such-task", &acme).await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.1323"));
    let (status, body) = get(&fleet, &path, &other).await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.1323"));
    let theirs = json!({"command": "ls", "instance_ids": ids});
    let refusal = (other.as_str(), Sent::WithRequestId, &theirs, NOT_YOURS);
    check_refusals(&fleet, "/v1/instances/async-command", &[refusal]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_query_status() {
    let (fleet, acme, other, ids) = setup(2).await;
    let both = json!({"instance_ids": ids});
    let body = ok(fleet
        .post("/v1/instances/batch-query-status", &acme, &both)
        .await);
    let results = body["data"]["status_results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r["status"] == 2),
        "running instances have their data loaded: {body}"
    );
    let too_many: Vec<String> = (0..101).map(|i| format!("i{i}")).collect();
    let too_many = json!({"instance_ids": too_many});
    let with_id = Sent::WithRequestId;
    check_refusals(
        &fleet,
        "/v1/instances/batch-query-status",
        &[
            (&other, with_id, &both, NOT_YOURS),
            (&acme, with_id, &too_many, INVALID),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reset_wipes_data() {
    let (fleet, acme, other, ids) = setup(1).await;
    sync(&fleet, &acme, "touch /data/keepsake", &ids).await;
    assert!(fleet.instance_data_dir(&ids[0]).join("keepsake").exists());
    let all = json!({"instance_ids": ids});
    let theirs = (other.as_str(), Sent::WithRequestId, &all, NOT_YOURS);
    check_refusals(&fleet, "/v1/instances/batch-reset", &[theirs]).await;
    assert!(
        fleet.instance_data_dir(&ids[0]).join("keepsake").exists(),
        "another tenant's reset changed nothing"
    );

    ok(fleet.post("/v1/instances/batch-reset", &acme, &all).await);
    // While the reset runs the instance shows running_status 4 (starting), then 2 again.
    let listing = fleet.list(&acme).await;
    let during = listing["data"]["result"][0]["running_status"].as_i64();
    assert!(matches!(during, Some(4) | Some(2)), "{listing}");
    fleet
        .wait_running_status(&acme, 2, 1, Duration::from_secs(30))
        .await;
    let (_, body) = sync(&fleet, &acme, "ls -a /data", &ids).await;
    assert!(
        !body["data"]["cmd_results"][0]["execute_msg"]
            .as_str()
            .unwrap()
            .contains("keepsake"),
        "{body}"
    );
    assert!(!fleet.instance_data_dir(&ids[0]).join("keepsake").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reboot() {
    let (fleet, acme, other, ids) = setup(1).await;
    let all = json!({"instance_ids": ids});
    let theirs = (other.as_str(), Sent::WithRequestId, &all, NOT_YOURS);
    check_refusals(&fleet, "/v1/instances/reboot", &[theirs]).await;
    sync(&fleet, &acme, "touch /data/survivor", &ids).await;
    ok(fleet.post("/v1/instances/reboot", &acme, &all).await);
    // Straight after, the instance is not running, so a second reboot is refused whole.
    let (status, body) = fleet.post("/v1/instances/reboot", &acme, &all).await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.5005"), "{body}");
    fleet
        .wait_running_status(&acme, 2, 1, Duration::from_secs(30))
        .await;
    assert!(
        fleet.instance_data_dir(&ids[0]).join("survivor").exists(),
        "a reboot keeps data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_and_unassign() {
    let (fleet, acme, other, ids) = setup(1).await;
    let bind = |user: Value| json!({"user_instances": [{"user_id": user, "instance_id": ids[0]}]});
    let assignment = async || {
        let row = fleet.list(&acme).await["data"]["result"][0].clone();
        let user = row["assign_user"].as_str().map(str::to_string);
        (row["assign_status"].as_i64(), user)
    };
    ok(fleet
        .post("/v1/instances/assign", &acme, &bind(json!("user-1")))
        .await);
    assert_eq!(assignment().await, (Some(1), Some("user-1".to_string())));
    // Already bound to someone else (2209; the seeds' example sends the user id as a number),
    // another tenant's instance.
    let bound = (400, "KPAPI.2209");
    let with_id = Sent::WithRequestId;
    check_refusals(
        &fleet,
        "/v1/instances/assign",
        &[
            (&acme, with_id, &bind(json!("user-2")), bound),
            (&acme, with_id, &bind(json!(1123422)), bound),
            (&other, with_id, &bind(json!("user-9")), NOT_YOURS),
        ],
    )
    .await;

    sync(&fleet, &acme, "touch /data/user-1-data", &ids).await;
    let not_bound = (
        acme.as_str(),
        with_id,
        &bind(json!("user-2")),
        (400, "KOOPHONE.API.2210"),
    );
    check_refusals(&fleet, "/v1/instances/unassign", &[not_bound]).await;
    ok(fleet
        .post("/v1/instances/unassign", &acme, &bind(json!("user-1")))
        .await);
    assert_eq!(assignment().await, (Some(0), Some(String::new())));
    // Unassigning clears the user's data.
    fleet
        .wait_running_status(&acme, 2, 1, Duration::from_secs(30))
        .await;
    wait_for(
        "the user's data to be wiped",
        Duration::from_secs(30),
        || async {
            (!fleet
                .instance_data_dir(&ids[0])
                .join("user-1-data")
                .exists())
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_instance() {
    let (fleet, acme, other, ids) = setup(2).await;
    let data = fleet.instance_data_dir(&ids[0]);
    assert!(data.exists());
    // CreateInstance's page lists no x-request-id either: ordering without one works.
    let body = ok(fleet
        .post_token_only(
            "/v1/instances/create",
            &acme,
            &serde_json::from_str(&cloudphone_testkit::fleet::order_sku(
                "kp.synthetic.540p",
                1,
            ))
            .unwrap(),
        )
        .await);
    let extra = body["data"]["instanceInfos"][0]["instanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = fleet
        .post_token_only(
            "/v1/instances/delete",
            &acme,
            &json!({"instanceIdList": [extra]}),
        )
        .await;
    assert_eq!(status, 200);
    // DeleteInstance's page lists no x-request-id: a documented client sends none.
    let first = json!({"instanceIdList": [ids[0]]});
    let token_only = Sent::TokenOnly;
    check_refusals(
        &fleet,
        "/v1/instances/delete",
        &[(&other, token_only, &first, NOT_YOURS)],
    )
    .await;
    let (status, body) = fleet
        .post_token_only("/v1/instances/delete", &acme, &first)
        .await;
    assert_eq!(
        (status, code(&body), body["data"].is_null()),
        (200, "0", true),
        "{body}"
    );
    assert!(!data.exists(), "the node removed the instance's data");
    let listing = fleet.list(&acme).await;
    assert_eq!(listing["data"]["total_count"], 1);
    assert_eq!(listing["data"]["result"][0]["instance_id"], ids[1].as_str());
    // A deleted instance is nobody's; an empty list is invalid.
    check_refusals(
        &fleet,
        "/v1/instances/delete",
        &[
            (&acme, token_only, &first, NOT_YOURS),
            (&acme, token_only, &json!({"instanceIdList": []}), INVALID),
        ],
    )
    .await;
}

/// The seed's SetVideoConfig example (`000_*.txt`), with the instance ids replaced.
pub(crate) fn video_setting(ids: &[String]) -> Value {
    let group = json!([{
        "definition_540P": {"code_rate": 6000, "fps": 30},
        "definition_720P": {"code_rate": 6000, "fps": 30},
        "definition_1080P": {"code_rate": 8000, "fps": 30}
    }]);
    let mut settings = Vec::new();
    for network in ["MOBILE_NETWORK", "WIFI", "WIRED"] {
        for encoding in ["H264", "H265"] {
            settings.push(json!({"network_type": network, "encoding_type": encoding, "video_spec_groups": group}));
        }
    }
    json!({"instance_ids": ids, "instance_settings": settings})
}

async fn put(fleet: &Fleet, path: &str, token: &str, body: &Value) -> (u16, Value) {
    fleet
        .call(reqwest::Method::PUT, path, token, Some(&body.to_string()))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_video_config() {
    let (fleet, acme, other, ids) = setup(2).await;
    ok(put(
        &fleet,
        "/v1/instances/video-setting",
        &acme,
        &video_setting(&ids),
    )
    .await);

    // Five of the six combinations: 1005.
    let mut missing = video_setting(&ids);
    missing["instance_settings"].as_array_mut().unwrap().pop();
    let (status, body) = put(&fleet, "/v1/instances/video-setting", &acme, &missing).await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.1005"));
    // Out-of-range values: 1000.
    for (pointer, value) in [
        (
            "/instance_settings/0/video_spec_groups/0/definition_540P/code_rate",
            json!(150),
        ),
        (
            "/instance_settings/0/video_spec_groups/0/definition_540P/code_rate",
            json!(10100),
        ),
        (
            "/instance_settings/1/video_spec_groups/0/definition_720P/fps",
            json!(45),
        ),
        ("/instance_settings/2/network_type", json!("5G")),
    ] {
        let mut bad = video_setting(&ids);
        *bad.pointer_mut(pointer).unwrap() = value;
        let (status, body) = put(&fleet, "/v1/instances/video-setting", &acme, &bad).await;
        assert_eq!(
            (status, code(&body)),
            (400, "KOOPHONE.API.1000"),
            "{pointer}"
        );
    }
    let (status, body) = put(
        &fleet,
        "/v1/instances/video-setting",
        &other,
        &video_setting(&ids),
    )
    .await;
    assert_eq!((status, code(&body)), (401, "KOOPHONE.API.1001"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_token_and_sessions() {
    let (fleet, acme, other, ids) = setup(2).await;
    // GetDeviceToken's page lists only the token header.
    let path = format!("/v1/instances/{}/auth", ids[0]);
    let body = ok(fleet.post_token_only(&path, &acme, &json!({})).await);
    let data = &body["data"];
    let token = data["device_token"].as_str().unwrap().to_string();
    let device_id = data["resource"]["device_id"].as_str().unwrap().to_string();
    let url = data["resource"]["rtc"]["ice_signaling"]["signaling_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 32, "random 128-bit token in hex");
    assert_eq!(data["resource"]["kp_id"], ids[0].as_str());
    assert!(data["resource"]["rtc"]["ice_signaling"]["ice_servers"].is_array());
    assert!(
        data["resource"]["sdk"]["internal"].is_object()
            && data["resource"]["sdk"]["external"].is_object()
    );
    // Sound: an Opus track in the WebRTC connection negotiated at the signaling port
    // (docs/api-notes.md); no separate internal audio address.
    let external = &data["resource"]["sdk"]["external"];
    let port = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let port: u64 = port.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(
        (external["aport"].as_u64(), external["atype"].as_u64()),
        (Some(port), Some(1))
    );
    assert!(data["resource"]["sdk"]["internal"]["aport"].is_null());

    // The node accepts exactly this token for this device, and nothing else.
    assert_eq!(hello(&url, &device_id, &token).await["type"], "ready");
    let wrong = hello(&url, &device_id, &"0".repeat(32)).await;
    assert_eq!(wrong["type"], "error", "{wrong}");
    let (_, second) = fleet
        .post_token_only(&format!("/v1/instances/{}/auth", ids[1]), &acme, &json!({}))
        .await;
    let other_device = second["data"]["resource"]["device_id"].as_str().unwrap();
    assert_eq!(
        hello(&url, other_device, &token).await["type"],
        "error",
        "another instance's token"
    );

    // Another tenant gets no token for our instance.
    let (status, body) = fleet.post_token_only(&path, &other, &json!({})).await;
    assert_eq!((status, code(&body)), (401, "KOOPHONE.API.1001"));

    // StopInstancesStreaming keeps the session; ReleaseInstancesSession revokes the token.
    let first = json!({"instance_id": ids[0]});
    // What the device token's `hello` gets after `path` is called on the instance.
    let hello_after = async |path: &str| {
        ok(fleet.post(path, &acme, &first).await);
        hello(&url, &device_id, &token).await["type"].clone()
    };
    let stop = hello_after("/v1/instances/streaming/stop").await;
    assert_eq!(stop, "ready", "the session outlives a stop");
    let release = hello_after("/v1/instances/session/release").await;
    assert_eq!(release, "error", "a released session's token is refused");
    let theirs = (other.as_str(), Sent::WithRequestId, &first, NOT_YOURS);
    check_refusals(&fleet, "/v1/instances/session/release", &[theirs]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_config_reaches_the_node() {
    let (fleet, acme, _other, ids) = setup(1).await;
    let mut setting = video_setting(&ids);
    // WIFI/H264 540P at 1200 kbit/s and 60 fps, so the node's answer can only come from here.
    for cell in setting["instance_settings"].as_array_mut().unwrap() {
        if cell["network_type"] == "WIFI" && cell["encoding_type"] == "H264" {
            cell["video_spec_groups"][0]["definition_540P"] = json!({"code_rate": 1200, "fps": 60});
        }
    }
    ok(put(&fleet, "/v1/instances/video-setting", &acme, &setting).await);
    let (_, token) = fleet
        .post_token_only(&format!("/v1/instances/{}/auth", ids[0]), &acme, &json!({}))
        .await;
    let resource = &token["data"]["resource"];
    let ready = hello(
        resource["rtc"]["ice_signaling"]["signaling_url"]
            .as_str()
            .unwrap(),
        resource["device_id"].as_str().unwrap(),
        token["data"]["device_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(
        (
            ready["video"]["bitrate_kbps"].as_u64(),
            ready["video"]["fps"].as_u64()
        ),
        (Some(1200), Some(60)),
        "{ready}"
    );
    assert_eq!(
        (
            ready["video"]["width"].as_u64(),
            ready["video"]["height"].as_u64()
        ),
        (Some(540), Some(960))
    );
}

/// Each code an order, a listing or a header can produce, with its HTTP status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_error_codes() {
    let fleet = Fleet::up("synthetic").await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let order = |pointer: &str, value: Value| {
        let mut body: Value = serde_json::from_str(&cloudphone_testkit::fleet::order_sku(
            "kp.synthetic.720p",
            1,
        ))
        .unwrap();
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    // The appendix sends 3002, 3003, 3006 and 3007 with HTTP 200; 3001 and 1000 with 400.
    for (body, expected) in [
        (
            order("/bandSkuld", json!("kp.other-band")),
            (400, "KOOPHONE.API.3001"),
        ),
        (
            order("/instanceSkuld", json!("kp.quantum.720p")),
            (200, "KOOPHONE.API.3002"),
        ),
        (
            order("/regionld", json!("eu-west-0")),
            (200, "KOOPHONE.API.3002"),
        ),
        (order("/os", json!("AOSP7")), (200, "KOOPHONE.API.3003")),
        (
            order("/chargeParam/periodNum", json!(12)),
            (200, "KOOPHONE.API.3006"),
        ),
        (
            order(
                "/chargeParam",
                json!({"chargingMode": 1, "periodType": 3, "periodNum": 4}),
            ),
            (200, "KOOPHONE.API.3007"),
        ),
        (order("/count", json!(1501)), (400, "KOOPHONE.API.1000")),
        (order("/count", json!("two")), (400, "KOOPHONE.API.1000")),
    ] {
        let (status, answer) = fleet.post("/v1/instances/create", &acme, &body).await;
        assert_eq!((status, code(&answer)), expected, "{body}");
    }
    let list = |query: &str| {
        let fleet = &fleet;
        let acme = acme.clone();
        let path = format!("/v1/instances/batch-query?{query}");
        async move { get(fleet, &path, &acme).await }
    };
    let (status, answer) =
        list("page_no=1&page_size=10&query_start_time=2023-08-15T14:30:45").await;
    assert_eq!((status, code(&answer)), (400, "KOOPHONE.API.5002"));
    let (status, answer) =
        list("page_no=1&page_size=10&query_start_time=2023-08-15%2014:30:45&query_end_time=2023-08-14%2000:00:00").await;
    assert_eq!((status, code(&answer)), (400, "KOOPHONE.API.5004"));
    let (status, answer) = list("page_no=0&page_size=10").await;
    assert_eq!((status, code(&answer)), (400, "KOOPHONE.API.1000"));
    // An x-request-id that is not a usable id: 0003.
    let (status, body) = list_with_request_id(&fleet, &acme, Some(&"x".repeat(200))).await;
    assert_eq!((status, code(&body)), (400, "KOOPHONE.API.0003"));
}
