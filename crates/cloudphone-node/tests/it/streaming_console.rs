//! The whole product path in a browser: real control and node processes, headless Chromium on
//! control's `/console/player`: IAM login → instance list → GetDeviceToken (control →
//! StartSession on the node) → signaling on the node → H.264 decoded in the page.

use cloudphone_testkit::browser::Browser;
use cloudphone_testkit::fleet::Fleet;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_player_logs_in_and_plays_an_instance() {
    let fleet = Fleet::up("synthetic").await;
    let token = fleet.login("acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&token, 1).await;
    let id = &ids[0];

    let mut browser = Browser::start(&format!("{}/console/player", fleet.api), &[]).await;
    browser.console_login("acme", "correct-horse-1").await;
    browser
        .ok(json!({"cmd":"wait_for","selector":format!("#instances option[value='{id}']")}))
        .await;
    browser.select("#instances", id).await;
    browser.select("#definition", "540P").await;
    browser.click("#connectBtn").await;
    let playing = browser
        .ok(json!({"cmd":"wait_frames","n":30,"timeout_ms":30000}))
        .await;
    let stats = &playing["stats"];
    assert_eq!(stats["codec"], "video/H264", "{stats}");
    assert_eq!(stats["frameWidth"], 540, "{stats}");
    assert_eq!(stats["frameHeight"], 960, "{stats}");
    eprintln!("console player: {stats}");
    browser.quit().await;
}
