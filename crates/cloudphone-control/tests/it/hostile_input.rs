//! Control's tenant-facing boundaries attacked over HTTP against real daemons (issue 13,
//! "hostile input"): a stored XSS payload in the console (headless Chromium), the pages'
//! Content-Security-Policy, password guessing, a token of one project acting on another
//! project's instances, a user reaching another user's access keys, and the instance quota.

use std::time::Duration;

use cloudphone_testkit::browser::Browser;
use cloudphone_testkit::fleet::{Fleet, error_code as code};
use serde_json::{Value, json};

use crate::support::{login_as, ok};

/// The user id an attacker stores, written to break out of a single-quoted JS string.
const XSS: &str = "');window.__pwn=1;//";

/// The payload as an assigned user id: the console shows it as text, and clicking its row's
/// unassign button unassigns exactly that user; nothing runs. Every console page carries the
/// policy, and each page's own script still runs under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_a_script_user_id_as_text_and_every_page_carries_the_csp() {
    let (fleet, acme, _, ids) = crate::operations::setup(1).await;
    let id = &ids[0];
    ok(fleet
        .post(
            "/v1/instances/assign",
            &acme,
            &json!({"user_instances": [{"user_id": XSS, "instance_id": id}]}),
        )
        .await);

    for page in [
        "/console/",
        "/console/player",
        "/console/usage",
        "/console/live",
    ] {
        let response = fleet.get_unauthenticated(page).await;
        assert_eq!(response.status(), 200, "{page}");
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'sha256-",
            "style-src 'sha256-",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(part), "{page}: {part} missing from {csp}");
        }
        assert!(!csp.contains("unsafe"), "{page}: {csp}");
        // Connections: the page's own origin, and for the player the node's signaling origin
        // and its HTTP form (screenshots and files) only (not every ws: or http: host).
        let connect = match page {
            "/console/player" => {
                let port = fleet.node_ports.1;
                format!("connect-src 'self' http://127.0.0.1:{port} ws://127.0.0.1:{port};")
            }
            _ => "connect-src 'self';".to_string(),
        };
        assert!(
            csp.contains(&connect),
            "{page}: {connect} missing from {csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{page}");
    }

    let mut browser = Browser::start(&format!("{}/console/", fleet.api), &[]).await;
    browser.console_login("acme", "correct-horse-1").await;
    let unassign = format!("tr[data-instance='{id}'] button[data-action='unassign']");
    browser
        .ok(json!({"cmd": "wait_for", "selector": unassign}))
        .await;
    let shown = browser
        .ok(json!({"cmd": "text", "selector": format!("tr[data-instance='{id}'] td:nth-child(5)")}))
        .await;
    assert_eq!(shown["text"], XSS, "the user id is shown as text");
    browser.click(&unassign).await;
    // The click did its job with the exact string: the binding is gone and the row offers
    // "assign" again.
    browser
        .ok(json!({"cmd": "wait_for",
            "selector": format!("tr[data-instance='{id}'] button[data-action='assign']")}))
        .await;
    let pwned = browser
        .ok(json!({"cmd": "eval", "expr": "typeof window.__pwn"}))
        .await;
    assert_eq!(pwned["value"], "undefined");
    let rows = fleet.list(&acme).await;
    assert_eq!(rows["data"]["result"][0]["assign_status"], 0, "{rows}");

    // Each page's own (hashed) script runs under its policy: the player sets up its API, the
    // usage page its state and functions.
    for (page, expr, ran) in [
        ("/console/player", "typeof window.cloudphone", "object"),
        (
            "/console/usage",
            "typeof S === 'object' && typeof render",
            "function",
        ),
    ] {
        browser.ok(json!({"cmd": "goto", "url": page})).await;
        let value = browser.ok(json!({"cmd": "eval", "expr": expr})).await;
        assert_eq!(value["value"], ran, "{page}");
    }
    browser.quit().await;
}

/// 40 wrong passwords in a row: `429` with `Retry-After` well before the 40th, and the right
/// password accepted once `Retry-After` has passed; guesses over many user names are locked
/// out per client address. Short backoff
/// windows (`[iam]`) keep the wait to about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_wrong_passwords_get_429_and_the_right_one_works_after_retry_after() {
    let fleet = Fleet::up_with(
        "synthetic",
        "login_free_failures = 5\nlogin_backoff_base_ms = 300\nlogin_backoff_max_ms = 1500\n",
        "",
    )
    .await;
    let mut locked = None;
    for n in 1..=40 {
        let (status, _, retry_after, body) =
            login_as(&fleet, "acme", "dev", "wrong-horse", "cn-north-7").await;
        if status == 429 {
            assert_eq!(code(&body), "APIGW.0308", "{body}");
            locked = Some((n, retry_after.expect("Retry-After on a 429")));
            break;
        }
        assert_eq!((status, code(&body)), (401, "IAM.0002"), "attempt {n}");
    }
    let (n, retry_after) = locked.expect("429 before the 40th wrong password");
    assert!(n < 40, "{n}");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // (That the right password is refused while locked is `http::tests::
    // login_backoff_in_tokio_time`'s: here the lock may be milliseconds from its end.)
    // Waiting out the lock is the behaviour under test: the daemon's clock is the real one.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, token, _, body) =
        login_as(&fleet, "acme", "dev", "correct-horse-1", "cn-north-7").await;
    assert_eq!(status, 201, "{body}");
    assert!(!token.is_empty());
    // Another user of the same tenant was never locked by the guesses against `dev`.
    let (status, ..) = login_as(&fleet, "other", "dev", "correct-horse-2", "cn-north-7").await;
    assert_eq!(status, 201);
    // Guesses spread over user names are counted per address as well: each name below is
    // guessed once (no user lock can be behind a 429), yet this address is soon refused.
    let mut refused = false;
    for n in 0..40 {
        let user = format!("nobody-{n}");
        let (status, ..) = login_as(&fleet, "acme", &user, "wrong-horse", "cn-north-7").await;
        if status == 429 {
            refused = true;
            break;
        }
        assert_eq!(status, 401, "{user}");
    }
    assert!(refused, "the address is locked out");
}

/// A token scoped to project B gets `KOOPHONE.API.1001` on every operation naming project A's
/// instance (and `1323` for A's task, which B's list does not show either), and nothing
/// changes; the same user's project-A token still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_b_token_gets_1001_on_project_a_instances() {
    let (fleet, project_a, _, ids) = crate::operations::setup(1).await;
    let id = &ids[0];
    let add_project = "project create --domain acme --project cn-east-3";
    fleet.admin(&add_project.split(' ').collect::<Vec<_>>());
    let (status, project_b, _, body) =
        login_as(&fleet, "acme", "dev", "correct-horse-1", "cn-east-3").await;
    assert_eq!(status, 201, "{body}");
    let task = ok(fleet
        .post(
            "/v1/instances/async-command",
            &project_a,
            &json!({"command": "ls", "instance_ids": ids}),
        )
        .await)["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    let binding = json!({"user_instances": [{"user_id": "u-1", "instance_id": id}]});
    let install = crate::install_app::body("http://example.invalid/a.apk", &"0".repeat(32), &ids);
    let (all, one) = (json!({"instance_ids": ids}), json!({"instance_id": id}));
    let auth = format!("{id}/auth");
    let intrude = json!({"command": "touch /data/intruder", "instance_ids": ids});
    let list = json!({"command": "ls", "instance_ids": ids});
    let prepare = json!({"user_id": "u-1", "instance_ids": ids});
    let progress = json!({"user_id": "u-1", "instance_id": id});
    // Every instance operation, by its path under /v1/instances/, with a body naming A's one.
    let operations: Vec<(&str, Value)> = vec![
        ("sync-command", intrude),
        ("async-command", list),
        ("batch-query-status", all.clone()),
        ("batch-reset", all.clone()),
        ("reboot", all.clone()),
        ("video-setting", crate::operations::video_setting(&ids)),
        ("app/install", install),
        ("backup", all),
        ("prepare", prepare),
        ("prepare-progress", progress),
        ("assign", binding.clone()),
        ("unassign", binding),
        (&auth, json!({})),
        ("streaming/stop", one.clone()),
        ("session/release", one),
        ("delete", json!({"instanceIdList": ids})),
    ];
    for (operation, body) in &operations {
        let method = match *operation {
            "video-setting" => reqwest::Method::PUT,
            _ => reqwest::Method::POST,
        };
        let path = format!("/v1/instances/{operation}");
        let (status, answer) = fleet
            .call(method, &path, &project_b, Some(&body.to_string()))
            .await;
        assert_eq!(
            (status, code(&answer)),
            (401, "KOOPHONE.API.1001"),
            "{path}: {answer}"
        );
    }
    let task_path = format!("/v1/instances/tasks/{task}");
    let get_task = |token: String| {
        let (fleet, path) = (&fleet, &task_path);
        async move { fleet.call(reqwest::Method::GET, path, &token, None).await }
    };
    let (status, answer) = get_task(project_b.clone()).await;
    assert_eq!(
        (status, code(&answer)),
        (400, "KOOPHONE.API.1323"),
        "{answer}"
    );
    let listed = fleet.list(&project_b).await;
    assert_eq!(listed["data"]["result"], json!([]), "{listed}");

    // Nothing happened to A's instance, and A's token still acts on it.
    assert!(!fleet.instance_data_dir(id).join("intruder").exists());
    let rows = fleet.list(&project_a).await;
    let row = &rows["data"]["result"][0];
    assert_eq!(
        (
            &row["instance_id"],
            &row["running_status"],
            &row["assign_status"]
        ),
        (&json!(id), &json!(2), &json!(0)),
        "{rows}"
    );
    ok(get_task(project_a.clone()).await);
}

/// Two users of one tenant: each lists only their own keys, and deleting the other's is
/// IAM's 404 (`IAM.0004`) with the key left working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_lists_and_deletes_only_their_own_access_keys() {
    let fleet = Fleet::up("synthetic").await;
    let dev = fleet.login("acme", "correct-horse-1").await;
    let add_user = "user create --domain acme --user ops --password correct-horse-3";
    fleet.admin(&add_user.split(' ').collect::<Vec<_>>());
    let (status, ops, _, body) =
        login_as(&fleet, "acme", "ops", "correct-horse-3", "cn-north-7").await;
    assert_eq!(status, 201, "{body}");
    let (dev_key, _) = fleet.access_key(&dev, "dev's").await;
    let (ops_key, _) = fleet.access_key(&ops, "ops's").await;

    let credentials = |token: String| {
        let fleet = &fleet;
        async move {
            let response = fleet
                .http
                .get(format!("{}/v3.0/OS-CREDENTIAL/credentials", fleet.api))
                .header("x-auth-token", token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["credentials"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["access"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        credentials(ops.clone()).await,
        std::slice::from_ref(&ops_key)
    );
    assert_eq!(
        credentials(dev.clone()).await,
        std::slice::from_ref(&dev_key)
    );

    let delete = |token: String, key: String| {
        let fleet = &fleet;
        async move {
            let response = fleet
                .http
                .delete(format!(
                    "{}/v3.0/OS-CREDENTIAL/credentials/{key}",
                    fleet.api
                ))
                .header("x-auth-token", token)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = delete(ops.clone(), dev_key.clone()).await;
    assert_eq!((status, code(&body)), (404, "IAM.0004"), "{body}");
    assert_eq!(
        credentials(dev.clone()).await,
        std::slice::from_ref(&dev_key),
        "still there"
    );
    assert_eq!(delete(dev.clone(), dev_key).await.0, 204);
    assert_eq!(credentials(dev).await, Vec::<String>::new());
    assert_eq!(credentials(ops).await, [ops_key]);
}

/// CreateInstance of `count` synthetic phones with `token`.
async fn order(fleet: &Fleet, token: &str, count: u32) -> (u16, Value) {
    let body = cloudphone_testkit::fleet::order_sku("kp.synthetic.720p", count);
    fleet
        .call(
            reqwest::Method::POST,
            "/v1/instances/create",
            token,
            Some(&body),
        )
        .await
}

/// A first order of 3 by `token` is `40010` (HTTP 200, the appendix's), its message naming
/// `quota`, and nothing is created.
async fn first_order_refused_whole(fleet: &Fleet, token: &str, quota: &str) {
    let (status, body) = order(fleet, token, 3).await;
    assert_eq!((status, code(&body)), (200, "KOOPHONE.API.40010"), "{body}");
    let message = body["error_msg"].as_str().unwrap_or_default();
    assert!(message.contains(quota), "{body}");
    assert_eq!(fleet.list(token).await["data"]["result"], json!([]));
}

/// `[quotas] instances_per_tenant`: an order that would take the tenant past it is
/// `KOOPHONE.API.40010` (HTTP 200, as the appendix lists it) and creates nothing, though the node has room; another tenant
/// has its own quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_past_the_tenant_instance_quota_are_refused() {
    let fleet = Fleet::up_with("synthetic", "[quotas]\ninstances_per_tenant = 2\n", "").await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let other = fleet.login("other", "correct-horse-2").await;
    first_order_refused_whole(&fleet, &acme, "quota").await;
    ok(order(&fleet, &acme, 2).await);
    let (status, body) = order(&fleet, &acme, 1).await;
    assert_eq!((status, code(&body)), (200, "KOOPHONE.API.40010"), "{body}");
    ok(order(&fleet, &other, 1).await);
}

/// `[quotas] instances_per_node_per_tenant`: with two nodes and a cap of 1, an order of two
/// lands one on each node; a third instance, though both nodes have free slots, is
/// `KOOPHONE.API.40010` (HTTP 200, the appendix's) and creates nothing; another tenant still gets a slot on a node
/// the first tenant is at its cap on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_past_the_tenant_per_node_quota_are_refused() {
    let fleet = Fleet::up_with(
        "synthetic",
        "[quotas]\ninstances_per_node_per_tenant = 1\n",
        "",
    )
    .await;
    let _node_b = fleet.start_extra_node("node-b").await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let other = fleet.login("other", "correct-horse-2").await;
    // Instances per node dir on each host, as the nodes made them.
    let on_nodes = || {
        ["node-state", "node-state-node-b"].map(|state| {
            std::fs::read_dir(fleet.path(state).join("instances"))
                .map(|dir| {
                    dir.filter_map(Result::ok)
                        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                        .count()
                })
                .unwrap_or(0)
        })
    };

    first_order_refused_whole(&fleet, &acme, "per node").await;

    ok(order(&fleet, &acme, 2).await);
    fleet
        .wait_running_status(&acme, 2, 2, Duration::from_secs(60))
        .await;
    assert_eq!(on_nodes(), [1, 1], "one instance on each node");

    let (status, body) = order(&fleet, &acme, 1).await;
    assert_eq!((status, code(&body)), (200, "KOOPHONE.API.40010"), "{body}");
    assert_eq!(
        fleet.list(&acme).await["data"]["result"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "nothing created: {body}"
    );

    ok(order(&fleet, &other, 1).await);
    fleet
        .wait_running_status(&other, 2, 1, Duration::from_secs(60))
        .await;
}

/// `[quotas] concurrent_commands_per_tenant`: SyncCommand runs past it are `APIGW.0308`
/// (429), counted per instance named and while they are in flight; once they end, the tenant
/// may run again, and another tenant was never limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_commands_past_the_tenant_limit_are_refused() {
    let fleet = Fleet::up_with(
        "synthetic",
        "[quotas]\nconcurrent_commands_per_tenant = 1\n",
        "",
    )
    .await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme, 2).await;
    let sync = |command: &'static str, ids: Vec<String>| {
        let (fleet, acme) = (&fleet, acme.clone());
        async move {
            fleet
                .post(
                    "/v1/instances/sync-command",
                    &acme,
                    &json!({"command": command, "instance_ids": ids}),
                )
                .await
        }
    };
    let (status, body) = sync("true", ids.clone()).await;
    assert_eq!(
        (status, code(&body)),
        (429, "APIGW.0308"),
        "two runs: {body}"
    );

    // A long run holds the one slot: a second command is refused while it runs. Each side
    // retries until it gets what it waits for, as the probe may hold the slot when the long
    // run asks for it.
    let long =
        cloudphone_testkit::wait_for("the long run admitted", Duration::from_secs(10), || {
            let run = sync("sleep 3", ids[..1].to_vec());
            async move {
                let (status, body) = run.await;
                (status != 429).then_some((status, body))
            }
        });
    let probe = cloudphone_testkit::wait_for(
        "a command refused while another runs",
        Duration::from_secs(10),
        || {
            let run = sync("true", ids[1..].to_vec());
            async move {
                let (status, body) = run.await;
                (status == 429).then_some(body)
            }
        },
    );
    let ((status, body), refused) = tokio::join!(long, probe);
    assert_eq!((status, code(&body)), (200, "0"), "{body}");
    assert_eq!(code(&refused), "APIGW.0308", "{refused}");
    ok(sync("true", ids[1..].to_vec()).await);
}
