//! The seeds' own request examples (`001_*.txt`, `000_*.txt`), ids replaced by real ones, sent
//! with exactly the headers each operation's page lists, against an x11 deployment like
//! `cargo xtask demo`'s. Each must succeed and answer in the documented shape.

use std::time::Duration;

use cloudphone_testkit::fleet::Fleet;
use cloudphone_testkit::wait_for;
use serde_json::{Value, json};

/// Sends a request the way a client following the operation's page would.
struct Client<'a> {
    fleet: &'a Fleet,
    token: String,
}

impl Client<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        request_id: bool,
        body: Option<Value>,
    ) -> Value {
        let mut request = self
            .fleet
            .http
            .request(method, format!("{}{path}", self.fleet.api))
            .header("X-Auth-Token", &self.token);
        if request_id {
            request = request.header("x-request-id", "seed-example");
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["error_code"], "0", "{path}: {body}");
        body
    }

    /// POST with a request id, answered with success.
    async fn post(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::POST, path, true, Some(body))
            .await
    }

    /// PUT with a request id, answered with success.
    async fn put(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::PUT, path, true, Some(body))
            .await
    }

    /// GET with a request id, answered with success.
    async fn get(&self, path: &str) -> Value {
        self.send(reqwest::Method::GET, path, true, None).await
    }

    /// BatchQueryStatus' `status` of one instance.
    async fn phone_status(&self, instance_id: &str) -> Value {
        let ids = json!({"instance_ids": [instance_id]});
        let body = self.post("/v1/instances/batch-query-status", ids).await;
        body["data"]["status_results"][0]["status"].clone()
    }
}

fn has(body: &Value, pointer: &str) {
    assert!(
        body.pointer(pointer).is_some(),
        "missing {pointer} in {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_example_succeeds() {
    // The InstallApp example downloads from a loopback server: allowlisted, as for a mirror.
    let fleet = Fleet::up_with("x11", "", "[apps]\nallow_hosts = [\"127.0.0.1\"]\n").await;
    let token = fleet.login("acme", "correct-horse-1").await;
    let c = Client {
        fleet: &fleet,
        token,
    };
    use reqwest::Method as M;

    // BatchShowSku: `/v1/instances/sku` (the example sends no `type`).
    let sku = c.send(M::GET, "/v1/instances/sku", false, None).await;
    has(&sku, "/data/bandInfo/cbcSkuId");
    let sku_id = sku["data"]["skuSpecResponseList"][0]["skuResponses"][0]["cbcSkuId"]
        .as_str()
        .unwrap()
        .to_string();

    // CreateInstance: the example, with its duplicated `chargeParam` key read as intended.
    let created = c
        .send(M::POST, "/v1/instances/create", false, Some(json!({
            "os": "AOSP9", "instanceSkuld": sku_id, "bandSkuld": "kp.bandwidth", "regionld": "cn-north-7",
            "instanceNamePrefix": "koophone", "bandSize": 4, "count": 3,
            "chargeParam": {"chargingMode": 1, "periodType": 2, "periodNum": 1, "isAutoPay": 1, "isAutoRenew": 1},
            "network": "EIP"})))
        .await;
    has(&created, "/data/orderId");
    assert_eq!(
        created["data"]["instanceInfos"][0]["instanceName"],
        "koophone-00001"
    );
    let ids: Vec<String> = created["data"]["instanceInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instanceId"].as_str().unwrap().to_string())
        .collect();
    let (a, b, spare) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    // ListInstances: `?page_no=1&page_size=200&poolSceneTag=CLOUD_PHONE`.
    wait_for("the phones to run", Duration::from_secs(60), || async {
        let list = c
            .get("/v1/instances/batch-query?page_no=1&page_size=200&poolSceneTag=CLOUD_PHONE")
            .await;
        let rows = list["data"]["result"].as_array()?.clone();
        (rows.len() == 3 && rows.iter().all(|r| r["running_status"] == 2)).then_some(())
    })
    .await;
    let list = c
        .get("/v1/instances/batch-query?page_no=1&page_size=200&poolSceneTag=CLOUD_PHONE")
        .await;
    for field in [
        "instance_id",
        "instance_name",
        "region",
        "instance_sku",
        "running_status",
        "assign_status",
        "project_id",
        "account_name",
        "backup_status",
    ] {
        has(&list, &format!("/data/result/0/{field}"));
    }
    has(&list, "/data/total_count");

    // SyncCommand: `ls -l /system` on two phones (x11 phones have no /system: status -1, output kept).
    let sync = c
        .post(
            "/v1/instances/sync-command",
            json!({"command": "ls -l /system", "instance_ids": [a, b]}),
        )
        .await;
    for field in [
        "instance_id",
        "status",
        "error_code",
        "error_msg",
        "execute_msg",
    ] {
        has(&sync, &format!("/data/cmd_results/0/{field}"));
    }

    // AsyncCommand + GetTask.
    let task = c
        .post(
            "/v1/instances/async-command",
            json!({"command": "ls -l /system", "instance_ids": [a, b]}),
        )
        .await;
    let task_id = task["data"]["task_id"].as_str().unwrap().to_string();
    has(&task, "/data/cmd_jobs/1/job_id");
    let jobs = c.get(&format!("/v1/instances/tasks/{task_id}")).await;
    for field in ["job_id", "status", "error_code", "error_msg", "execute_msg"] {
        has(&jobs, &format!("/data/jobs/0/{field}"));
    }

    // SetVideoConfig: seed 000's example.
    c.put(
        "/v1/instances/video-setting",
        crate::operations::video_setting(std::slice::from_ref(&a)),
    )
    .await;

    // BatchQueryStatus.
    let status = c
        .post(
            "/v1/instances/batch-query-status",
            json!({"instance_ids": [a, b]}),
        )
        .await;
    has(&status, "/data/status_results/1/status");

    // GetDeviceToken: a POST with no body.
    let device = c
        .send(M::POST, &format!("/v1/instances/{a}/auth"), false, None)
        .await;
    for pointer in [
        "/data/resource/sdk/internal",
        "/data/resource/sdk/external",
        "/data/resource/rtc/ice_signaling/signaling_url",
        "/data/resource/rtc/ice_signaling/ice_servers",
        "/data/resource/device_id",
        "/data/resource/kp_id",
        "/data/device_token",
    ] {
        has(&device, pointer);
    }

    // StopInstancesStreaming and ReleaseInstancesSession.
    c.post("/v1/instances/streaming/stop", json!({"instance_id": a}))
        .await;
    c.post("/v1/instances/session/release", json!({"instance_id": a}))
        .await;

    // AssignInstance (no example: the table's fields) and UnassignInstance (its example's numeric user id).
    c.post(
        "/v1/instances/assign",
        json!({"user_instances": [{"user_id": "1123422", "instance_id": b}]}),
    )
    .await;
    c.post(
        "/v1/instances/unassign",
        json!({"user_instances": [{"instance_id": b, "user_id": 1123422}]}),
    )
    .await;

    // BatchRebootInstance, then BatchReset once it runs again — and once `b`, wiped by the
    // unassign, runs again too: a wipe of a phone still starting is refused (62010).
    c.post("/v1/instances/reboot", json!({"instance_ids": [a]}))
        .await;
    for (id, what) in [(&a, "the rebooted phone"), (&b, "the wiped phone")] {
        wait_for(what, Duration::from_secs(60), || async {
            let status = c.phone_status(id).await;
            let list = c
                .get(&format!(
                    "/v1/instances/batch-query?page_no=1&page_size=1&instance_id={id}"
                ))
                .await;
            (status == 2 && list["data"]["result"][0]["running_status"] == 2).then_some(())
        })
        .await;
    }
    c.post("/v1/instances/batch-reset", json!({"instance_ids": [a, b]}))
        .await;

    // InstallApp: the example with a reachable URL (its md5 placeholder then fails the job, not the call).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/com.tencent.mm.apk",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/com.tencent.mm.apk",
            axum::routing::get(|| async { "not a real package" }),
        );
        axum::serve(listener, app).await
    });
    let install = c
        .post("/v1/instances/app/install", json!({
            "fast_install": 1, "object_name": "com.tencent.mm", "file_name": "meituan.apk", "object_version": "8.0.58",
            "object_size": 120, "biz_type": "apk", "content_type": "application/octet-stream", "content_md5": "fghfg",
            "install_package_url": url, "instance_id_list": [a, b]}))
        .await;
    assert!(
        install["data"]["data"]["task_id"]
            .as_str()
            .unwrap()
            .starts_with("ZGCA")
    );
    has(&install, "/data/data/cmd_jobs/1/job_id");

    // BatchBackupInstances (its example's body), BatchPrepareInstances (repeated id), ShowProgress.
    c.post(
        "/v1/instances/backup",
        json!({"user_id": "1008600000104285462", "instance_id": spare}),
    )
    .await;
    wait_for("the backup", Duration::from_secs(60), || async {
        (c.phone_status(&spare).await == 0).then_some(())
    })
    .await;
    let prepared = c
        .send(
            M::POST,
            "/v1/instances/prepare",
            false,
            Some(json!({"user_id": "1008600000104285462", "instance_ids": [spare, spare]})),
        )
        .await;
    has(&prepared, "/data/status_list/0/status");
    wait_for("the restore", Duration::from_secs(60), || async {
        let p = c
            .send(
                M::POST,
                "/v1/instances/prepare-progress",
                false,
                Some(json!({"user_id": "1008600000104285462", "instance_id": spare})),
            )
            .await;
        assert!(p.pointer("/data/waitingCount").is_some(), "{p}");
        (p["data"]["status"] == 0).then_some(())
    })
    .await;

    // DeleteInstance.
    let deleted = c
        .send(
            M::POST,
            "/v1/instances/delete",
            false,
            Some(json!({"instanceIdList": [spare]})),
        )
        .await;
    assert!(deleted["data"].is_null());
}
