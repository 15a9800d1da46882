//! Seed 001 §3.2's AK/SK authentication on the CloudDevice operations, signed by the official
//! Huawei SDK core (`huaweicloudsdkcore`'s `Signer` under `BasicCredentials`, from PyPI in the
//! venv `support::venv_python` makes) against a live control + node: ListInstances and
//! GetDeviceToken are accepted (and the device token streams); a wrong secret, another tenant's
//! key on this project, a key naming no project and a body changed after signing are refused
//! with the documented codes. Also over HTTP: domain-scoped tokens and `GET /v3/auth/projects`
//! (token, and `GlobalCredentials` signing).
//! The clock-dependent rules (a signature's 15-minute window) are tested in-process on a
//! controlled clock: `http::tests::signed_calls_on_a_controlled_clock`.

use std::io::Write;
use std::process::{Command, Stdio};

use cloudphone_testkit::browser::workspace;
use cloudphone_testkit::fleet::{Fleet, error_code as code};
use serde_json::{Value, json};

use crate::support::{password_login, venv_python, watch};

/// Runs `tests/sdk/clouddevice.py` over `calls` (see the script for their form); answers each
/// call's `{name, status, authorization, body}` by name.
fn sdk_calls(fleet: &Fleet, calls: &[Value]) -> std::collections::HashMap<String, Value> {
    let python = venv_python();
    let mut child = Command::new(python)
        .arg(workspace().join("tests/sdk/clouddevice.py"))
        .env("CP_ENDPOINT", &fleet.api)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::from(calls.to_vec()).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SDK run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    answers
        .into_iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), a))
        .collect()
}

/// One call for the script: `name`, signed with `ak`/`sk` under `BasicCredentials` with
/// `project` (none: no `X-Project-Id`).
fn call(name: &str, (ak, sk): (&str, &str), project: Option<&str>, request: Value) -> Value {
    let mut call = json!({"name": name, "ak": ak, "sk": sk, "project": project});
    for (k, v) in request.as_object().unwrap() {
        call[k] = v.clone();
    }
    call
}

fn list_instances() -> Value {
    json!({"method": "GET", "path": "/v1/instances/batch-query",
        "query": [["page_no", "1"], ["page_size", "10"]],
        "headers": {"x-request-id": "req-sdk-list"}})
}

fn batch_query_status(instance: &str) -> Value {
    json!({"method": "POST", "path": "/v1/instances/batch-query-status",
        "headers": {"x-request-id": "req-sdk-status"},
        "body": json!({"instance_ids": [instance]}).to_string()})
}

fn device_token(instance: &str) -> Value {
    json!({"method": "POST", "path": format!("/v1/instances/{instance}/auth"), "body": "{}"})
}

/// (status, error_code) of a named answer.
fn outcome<'a>(
    answers: &'a std::collections::HashMap<String, Value>,
    name: &str,
) -> (u64, &'a str) {
    let answer = &answers[name];
    (answer["status"].as_u64().unwrap(), code(&answer["body"]))
}

/// The Done-when of issue 14's first item: a ListInstances and a GetDeviceToken signed by the
/// SDK's own signer are accepted, and the device token opens a signaling session; the same
/// ListInstances with a wrong secret is `6001`/401; another tenant's key on this project is
/// `6002`/403 on both (and on its own project sees none of these instances: `1001` on the
/// instance, an empty list); a key naming no project is `6002`; a signed body swapped before
/// sending is `6001`. Domain scope over HTTP: a domain-scoped token lists the tenant's projects
/// but gets `6002` on ListInstances, and `GlobalCredentials` signing lists them too, only for
/// the key's own domain (`IAM.0003` otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_signer_is_accepted_on_list_instances_and_get_device_token() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    assert!(python.exists());
    let fleet = Fleet::up("synthetic").await;
    let acme = fleet.scoped_login("acme", "correct-horse-1").await;
    let other = fleet.scoped_login("other", "correct-horse-2").await;
    let ids = fleet.running_instances(&acme.token, 1).await;
    let id = ids[0].as_str();
    let (ak, sk) = fleet.access_key(&acme.token, "sdk").await;
    let (other_ak, other_sk) = fleet.access_key(&other.token, "sdk").await;
    let key = (ak.as_str(), sk.as_str());
    let other_key = (other_ak.as_str(), other_sk.as_str());
    let acme_project = Some(acme.project_id.as_str());

    let swapped = {
        let mut c = call("swapped-body", key, acme_project, batch_query_status(id));
        c["send_body"] = json!(json!({"instance_ids": ["iRJEVP96"]}).to_string());
        c
    };
    let calls = [
        call("list", key, acme_project, list_instances()),
        call("device-token", key, acme_project, device_token(id)),
        call("status", key, acme_project, batch_query_status(id)),
        call(
            "wrong-sk",
            (&ak, "not-the-secret-key-0123456789"),
            acme_project,
            list_instances(),
        ),
        call("other-key-list", other_key, acme_project, list_instances()),
        call("other-key-token", other_key, acme_project, device_token(id)),
        call(
            "other-key-own-project-list",
            other_key,
            Some(&other.project_id),
            list_instances(),
        ),
        call(
            "other-key-own-project-token",
            other_key,
            Some(&other.project_id),
            device_token(id),
        ),
        call("no-project", key, None, list_instances()),
        swapped,
        json!({"name": "projects", "ak": ak, "sk": sk, "domain": acme.tenant_id,
            "method": "GET", "path": "/v3/auth/projects"}),
        json!({"name": "projects-other-domain", "ak": ak, "sk": sk, "domain": other.tenant_id,
            "method": "GET", "path": "/v3/auth/projects"}),
    ];
    let fleet_ref = &fleet;
    let answers = tokio::task::block_in_place(|| sdk_calls(fleet_ref, &calls));
    for answer in answers.values() {
        let auth = answer["authorization"].as_str().unwrap();
        assert!(
            auth.starts_with("SDK-HMAC-SHA256 Access=") && auth.contains("x-sdk-date"),
            "{answer}"
        );
    }

    // Accepted: the list shows the instance, the device token streams.
    let list = &answers["list"];
    assert_eq!(outcome(&answers, "list"), (200, "0"), "{list}");
    let rows = list["body"]["data"]["result"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["instance_id"], id);
    assert!(
        list["authorization"]
            .as_str()
            .unwrap()
            .contains("x-project-id"),
        "BasicCredentials signs X-Project-Id"
    );
    let token = &answers["device-token"];
    assert_eq!(outcome(&answers, "device-token"), (200, "0"), "{token}");
    let data = &token["body"]["data"];
    let (ready, _) = watch(
        data["resource"]["rtc"]["ice_signaling"]["signaling_url"]
            .as_str()
            .unwrap(),
        data["resource"]["device_id"].as_str().unwrap(),
        data["device_token"].as_str().unwrap(),
        async {},
    )
    .await;
    assert_eq!(ready["type"], "ready");
    let status = &answers["status"];
    assert_eq!(
        outcome(&answers, "status"),
        (200, "0"),
        "a signed JSON body: {status}"
    );
    assert_eq!(
        status["body"]["data"]["status_results"][0]["instance_id"],
        id
    );

    // Refused, with the documented codes.
    for (name, expected) in [
        ("wrong-sk", (401, "KOOPHONE.API.6001")),
        ("swapped-body", (401, "KOOPHONE.API.6001")),
        ("other-key-list", (403, "KOOPHONE.API.6002")),
        ("other-key-token", (403, "KOOPHONE.API.6002")),
        ("no-project", (403, "KOOPHONE.API.6002")),
        ("other-key-own-project-token", (401, "KOOPHONE.API.1001")),
        ("projects-other-domain", (403, "IAM.0003")),
    ] {
        assert_eq!(outcome(&answers, name), expected, "{}", answers[name]);
    }
    let own = &answers["other-key-own-project-list"];
    assert_eq!(own["status"], 200, "{own}");
    assert_eq!(own["body"]["data"]["result"], json!([]), "{own}");

    // IAM: the signed project list, and a domain-scoped token over HTTP.
    let projects = &answers["projects"];
    assert_eq!(projects["status"], 200, "{projects}");
    assert_eq!(
        projects["body"]["projects"][0]["id"],
        acme.project_id.as_str(),
        "{projects}"
    );
    let scope = json!({"domain": {"name": "acme"}});
    let response = password_login(&fleet, "acme", "dev", "correct-horse-1", scope).await;
    assert_eq!(response.status(), 201);
    let domain_token = response.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token"]["domain"]["id"], acme.tenant_id.as_str());
    let listed: Value = fleet
        .http
        .get(format!("{}/v3/auth/projects", fleet.api))
        .header("x-auth-token", &domain_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["projects"][0]["id"],
        acme.project_id.as_str(),
        "{listed}"
    );
    let (status, body) = fleet
        .call(
            reqwest::Method::GET,
            "/v1/instances/batch-query?page_no=1&page_size=10",
            &domain_token,
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (403, "KOOPHONE.API.6002"), "{body}");
}
