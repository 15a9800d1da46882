//! InstallApp end to end: a package served over HTTP is downloaded by the node, checked against
//! the order's MD5 and size, installed into the instance, and reported through GetTask; URLs that lead to
//! the node's own network are refused before a byte reaches them, and the node's download slots
//! cap how many packages it fetches at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudphone_testkit::fleet::Fleet;
use cloudphone_testkit::wait_for;
use serde_json::{Value, json};

use crate::support::get;

/// Builds an app package (tar.gz with `app.json`) and returns its bytes.
fn package(dir: &std::path::Path) -> Vec<u8> {
    let src = dir.join("pkg");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(
        src.join("app.json"),
        r#"{"name":"com.example.hello","version":"1.0.0","exec":"bin/hello"}"#,
    )
    .unwrap();
    std::fs::write(src.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    let out = dir.join("hello.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .args(["app.json", "bin"])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// The node's `[apps]` allowlist for these tests: their package servers listen on 127.0.0.1,
/// which the node refuses unless the operator lists it (as for a private mirror).
const LOOPBACK_MIRROR: &str = "[apps]\nallow_hosts = [\"127.0.0.1\"]\n";

/// Serves `bytes` at `http://127.0.0.1:<port>/hello.apk` for the rest of the test.
async fn serve(bytes: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hello.apk",
        axum::routing::get(move || async move { bytes.clone() }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hello.apk")
}

pub(crate) fn body(url: &str, md5: &str, ids: &[String]) -> Value {
    json!({"fast_install": 1, "object_name": "com.example.hello", "file_name": "hello.apk",
        "object_version": "1.0.0", "object_size": 1, "biz_type": "apk",
        "content_type": "application/octet-stream", "content_md5": md5,
        "install_package_url": url, "instance_id_list": ids})
}

async fn finished_jobs(fleet: &Fleet, token: &str, task_id: &str) -> Vec<Value> {
    let path = format!("/v1/instances/tasks/{task_id}");
    wait_for(
        "install jobs to finish",
        Duration::from_secs(30),
        || async {
            let (_, body) = get(fleet, &path, token).await;
            let jobs = body["data"]["jobs"].as_array()?.clone();
            jobs.iter().all(|j| j["status"] != 1).then_some(jobs)
        },
    )
    .await
}

/// The task id of an InstallApp answer.
fn task_id(answer: &Value) -> String {
    answer["data"]["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Orders an install of `url` (checked against `md5`) on `ids`; returns the finished jobs.
async fn install_jobs(
    fleet: &Fleet,
    token: &str,
    url: &str,
    md5: &str,
    ids: &[String],
) -> Vec<Value> {
    let (_, answer) = fleet
        .post("/v1/instances/app/install", token, &body(url, md5, ids))
        .await;
    finished_jobs(fleet, token, &task_id(&answer)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_app() {
    let fleet = Fleet::up_with("synthetic", "", LOOPBACK_MIRROR).await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let other = fleet.login("other", "correct-horse-2").await;
    let ids = fleet.running_instances(&acme, 2).await;
    let bytes = package(fleet.dir.path());
    let md5 = format!("{:032x}", md5_of(&bytes));
    let url = serve(bytes).await;

    let (status, answer) = fleet
        .post("/v1/instances/app/install", &acme, &body(&url, &md5, &ids))
        .await;
    assert_eq!(
        (status, answer["error_code"].as_str()),
        (200, Some("0")),
        "{answer}"
    );
    let task_id = task_id(&answer);
    assert!(task_id.starts_with("ZGCA"), "{task_id}");
    assert_eq!(
        answer["data"]["data"]["cmd_jobs"].as_array().unwrap().len(),
        2
    );
    let jobs = finished_jobs(&fleet, &acme, &task_id).await;
    assert!(jobs.iter().all(|j| j["status"] == 2), "{jobs:?}");
    for id in &ids {
        let installed = fleet
            .instance_data_dir(id)
            .join("apps/com.example.hello/bin/hello");
        assert!(installed.exists(), "installed into {id}'s data");
    }

    // A wrong MD5 (the seed example's placeholder) fails the job with 62017; nothing lands.
    let jobs = install_jobs(&fleet, &acme, &url, "fghfg", &ids[..1]).await;
    assert_eq!(
        (jobs[0]["status"].as_i64(), jobs[0]["error_code"].as_str()),
        (Some(-1), Some("KOOPHONE.API.62017"))
    );
    // An unreachable URL: 62017 too.
    let dead = format!(
        "http://127.0.0.1:{}/nothing.apk",
        cloudphone_testkit::free_port()
    );
    let jobs = install_jobs(&fleet, &acme, &dead, "", &ids[..1]).await;
    assert_eq!(jobs[0]["error_code"], "KOOPHONE.API.62017");

    // A package that downloads and checks out but is not an installable archive: 62019.
    let junk = b"not an archive at all".to_vec();
    let junk_md5 = format!("{:032x}", md5_of(&junk));
    let junk_url = serve(junk).await;
    let jobs = install_jobs(&fleet, &acme, &junk_url, &junk_md5, &ids[..1]).await;
    assert_eq!(
        (jobs[0]["status"].as_i64(), jobs[0]["error_code"].as_str()),
        (Some(-1), Some("KOOPHONE.API.62019"))
    );

    // Request-level codes, with the appendix's HTTP 200.
    let mut bad = body(&url, &md5, &ids);
    bad["fast_install"] = json!(3);
    let (status, answer) = fleet.post("/v1/instances/app/install", &acme, &bad).await;
    assert_eq!(
        (status, answer["error_code"].as_str()),
        (200, Some("KOOPHONE.API.3008"))
    );
    bad = body(&url, &md5, &ids);
    bad["object_size"] = json!("lots");
    let (status, answer) = fleet.post("/v1/instances/app/install", &acme, &bad).await;
    assert_eq!(
        (status, answer["error_code"].as_str()),
        (200, Some("KOOPHONE.API.62006"))
    );
    bad["object_size"] = json!(4096);
    let (status, answer) = fleet.post("/v1/instances/app/install", &acme, &bad).await;
    assert_eq!(
        (status, answer["error_code"].as_str()),
        (200, Some("KOOPHONE.API.62015"))
    );
    let (status, answer) = fleet
        .post("/v1/instances/app/install", &other, &body(&url, &md5, &ids))
        .await;
    assert_eq!(
        (status, answer["error_code"].as_str()),
        (401, Some("KOOPHONE.API.1001"))
    );
}

/// The order's `object_size` (MB, 2^20 bytes) reaches the node, which refuses a package of
/// another size: declared to six decimals (about a byte), the package is installed when it is
/// the size declared, and fails with 62017 when it is smaller (4 KiB under the declared size)
/// or larger (twice the declared size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_app_checks_the_declared_size() {
    let fleet = Fleet::up_with("synthetic", "", LOOPBACK_MIRROR).await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme, 1).await;
    let bytes = package(fleet.dir.path());
    let md5 = format!("{:032x}", md5_of(&bytes));
    let len = bytes.len() as f64;
    let url = serve(bytes).await;
    let declared = |bytes: f64| format!("{:.6}", bytes / 1_048_576.0);

    for (size, expected) in [
        (declared(len + 4096.0), "KOOPHONE.API.62017"),
        (declared(len / 2.0), "KOOPHONE.API.62017"),
        (declared(len), ""),
    ] {
        let mut order = body(&url, &md5, &ids);
        order["object_size"] = json!(size);
        let (status, answer) = fleet.post("/v1/instances/app/install", &acme, &order).await;
        assert_eq!(
            (status, answer["error_code"].as_str()),
            (200, Some("0")),
            "{answer}"
        );
        let jobs = finished_jobs(&fleet, &acme, &task_id(&answer)).await;
        assert_eq!(
            jobs[0]["error_code"], expected,
            "object_size {size}: {jobs:?}"
        );
        let status = if expected.is_empty() { 2 } else { -1 };
        assert_eq!(jobs[0]["status"], status, "object_size {size}: {jobs:?}");
        if !expected.is_empty() {
            assert_eq!(
                jobs[0]["execute_msg"], "the package does not match the order",
                "nothing about the sizes reaches the tenant: {jobs:?}"
            );
        }
    }
    let installed = fleet
        .instance_data_dir(&ids[0])
        .join("apps/com.example.hello/bin/hello");
    assert!(
        installed.exists(),
        "the package of the declared size installed"
    );
}

/// A TCP server on `ip` that counts the connections it accepts (each answered with a small
/// package): a refused URL must leave the count at 0.
async fn counting_server(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 2048];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")
                    .await;
            });
        }
    });
    (addr, count)
}

/// A value of the node's Prometheus `/metrics` (0 when the series does not exist yet).
async fn node_metric(fleet: &Fleet, name: &str) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", fleet.node_ports.1);
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

const REFUSED: &str = "cloudphone_node_app_downloads_refused_total";

/// Loopback (other than the allowlisted 127.0.0.1, also in its IPv4-mapped IPv6 form), the
/// cloud metadata address, a private address, and an allowlisted host redirecting to a refused
/// one: every job fails with the generic 62017, no connection reaches the target, and the node
/// counts each refusal. The allowlisted host itself still serves the redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_app_refuses_internal_urls() {
    let fleet = Fleet::up_with("synthetic", "", LOOPBACK_MIRROR).await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme, 1).await;
    let (target, hits) = counting_server("127.0.0.2").await;
    let port = target.port();

    let redirects = Arc::new(AtomicUsize::new(0));
    let redirected = Arc::clone(&redirects);
    let to = format!("http://127.0.0.2:{port}/a.apk");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/a.apk",
        axum::routing::get(move || {
            redirected.fetch_add(1, Ordering::SeqCst);
            let to = to.clone();
            async move { axum::response::Redirect::temporary(&to) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let urls = [
        format!("http://127.0.0.2:{port}/a.apk"),
        format!("http://[::ffff:127.0.0.2]:{port}/a.apk"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://10.255.255.1:{port}/a.apk"),
        format!("http://{mirror}/a.apk"),
    ];
    for (n, url) in urls.iter().enumerate() {
        let jobs = install_jobs(&fleet, &acme, url, "", &ids).await;
        let job = &jobs[0];
        assert_eq!(
            (job["status"].as_i64(), job["error_code"].as_str()),
            (Some(-1), Some("KOOPHONE.API.62017")),
            "{url}: {job}"
        );
        // Nothing about the target (address, port, status, size) comes back to the tenant.
        assert_eq!(
            (job["error_msg"].as_str(), job["execute_msg"].as_str()),
            (
                Some("download failed, check install_package_url"),
                Some("the package could not be downloaded")
            ),
            "{url}: {job}"
        );
        assert_eq!(node_metric(&fleet, REFUSED).await, (n + 1) as f64, "{url}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused target was reached"
    );
    assert_eq!(
        redirects.load(Ordering::SeqCst),
        1,
        "the allowlisted mirror was asked"
    );
}

/// With `max_concurrent_downloads = 1`, an order for two instances fetches one package at a
/// time: the second download waits for the slot (the node's gauge shows it) while the first is
/// held open by the server, and both install once the first completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_downloads_wait_for_a_slot() {
    let extra = format!("{LOOPBACK_MIRROR}max_concurrent_downloads = 1\n");
    let fleet = Fleet::up_with("synthetic", "", &extra).await;
    let acme = fleet.login("acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&acme, 2).await;
    let bytes = package(fleet.dir.path());
    let md5 = format!("{:032x}", md5_of(&bytes));

    let requests = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (counted, held) = (Arc::clone(&requests), Arc::clone(&gate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hello.apk", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/hello.apk",
        axum::routing::get(move || {
            let (counted, held, bytes) = (Arc::clone(&counted), Arc::clone(&held), bytes.clone());
            async move {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    held.acquire().await.unwrap().forget();
                }
                bytes
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (_, answer) = fleet
        .post("/v1/instances/app/install", &acme, &body(&url, &md5, &ids))
        .await;
    wait_for(
        "the second download to wait for the slot",
        Duration::from_secs(30),
        || async {
            (node_metric(&fleet, "cloudphone_node_app_downloads_waiting").await == 1.0
                && requests.load(Ordering::SeqCst) == 1)
                .then_some(())
        },
    )
    .await;
    // The first request is still held open, so the waiting one cannot have been sent.
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    gate.add_permits(1);
    let jobs = finished_jobs(&fleet, &acme, &task_id(&answer)).await;
    assert!(jobs.iter().all(|j| j["status"] == 2), "{jobs:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        node_metric(&fleet, "cloudphone_node_app_downloads_waiting").await,
        0.0
    );
}

/// MD5 via the system tool, so the test does not trust the code under test for its expectation.
fn md5_of(bytes: &[u8]) -> u128 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("md5sum")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    u128::from_str_radix(text.split_whitespace().next().unwrap(), 16).unwrap()
}
