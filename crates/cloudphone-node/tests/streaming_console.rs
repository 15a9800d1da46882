//! The whole product path in a browser: real control and node processes, headless Chromium on
//! control's `/console/player`: IAM login → instance list → GetDeviceToken (control →
//! StartSession on the node) → signaling on the node → H.264 decoded in the page.

mod streaming_support;

use cloudphone_testkit::fleet::Fleet;
use serde_json::{Value, json};
use streaming_support::Browser;

/// One driver command that must succeed.
async fn ok(browser: &mut Browser, cmd: Value) -> Value {
    let reply = browser.call(cmd.clone()).await;
    assert_eq!(reply["ok"], true, "{cmd} → {reply}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_player_logs_in_and_plays_an_instance() {
    let fleet = Fleet::up("synthetic").await;
    let token = fleet.login("acme", "correct-horse-1").await;
    let ids = fleet.running_instances(&token, 1).await;
    let id = &ids[0];

    let mut browser = Browser::start(&format!("{}/console/player", fleet.api)).await;
    for (selector, value) in [
        ("#domain", "acme"),
        ("#user", "dev"),
        ("#password", "correct-horse-1"),
        ("#project", "cn-north-7"),
    ] {
        ok(
            &mut browser,
            json!({"cmd":"fill","selector":selector,"value":value}),
        )
        .await;
    }
    ok(&mut browser, json!({"cmd":"click","selector":"#loginBtn"})).await;
    ok(
        &mut browser,
        json!({"cmd":"wait_for","selector":format!("#instances option[value='{id}']")}),
    )
    .await;
    ok(
        &mut browser,
        json!({"cmd":"select","selector":"#instances","value":id}),
    )
    .await;
    ok(
        &mut browser,
        json!({"cmd":"select","selector":"#definition","value":"540P"}),
    )
    .await;
    ok(
        &mut browser,
        json!({"cmd":"click","selector":"#connectBtn"}),
    )
    .await;
    let playing = ok(
        &mut browser,
        json!({"cmd":"wait_frames","n":30,"timeout_ms":30000}),
    )
    .await;
    let stats = &playing["stats"];
    assert_eq!(stats["codec"], "video/H264", "{stats}");
    assert_eq!(stats["frameWidth"], 540, "{stats}");
    assert_eq!(stats["frameHeight"], 960, "{stats}");
    eprintln!("console player: {stats}");
    let _ = browser.call(json!({"cmd":"quit"})).await;
    browser.wait().await;
}
