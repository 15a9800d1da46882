//! Viewer roles and the viewer cap (issue 16): an observer's taps change nothing on the phone's
//! screen, are refused with `input_refused` and counted on `/metrics`, while an owner's identical
//! tap does; the eleventh viewer of a phone is refused at hello with `too_many_viewers`.

use std::time::Duration;

use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::{
    ClientMessage, Definition, EncodingType, ErrorCode, InputRefusal, NodeMessage, Role,
};

use crate::demo_app::{
    BUTTON_A, H, W, authorize_owner_and_observer, demo_phone_owner_and_observer, input_open, tap,
    wait_app_drawn, wait_screen,
};
use crate::support::streaming::{Node, Signaling, hello};

/// The node's count of input events refused for observers (0 before the first).
async fn refused_observer_inputs(node: &Node) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", node.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("cloudphone_node_input_refused_total{reason=\"observer\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observers_tap_changes_nothing_while_an_owners_does() {
    let (node, display, mut owner, mut observer) = demo_phone_owner_and_observer().await;
    // Each viewer hears its role in `ready`, so a player can disable its controls up front.
    assert!(matches!(
        owner.ready,
        NodeMessage::Ready {
            role: Role::Owner,
            ..
        }
    ));
    assert!(matches!(
        observer.ready,
        NodeMessage::Ready {
            role: Role::Observer,
            ..
        }
    ));
    // The app is up: its text field is white.
    wait_app_drawn(&mut owner, &display).await;
    input_open(&mut owner).await;
    input_open(&mut observer).await;
    // A corner of the button, away from its labels: the button's colour.
    let corner = |s: &[u8]| BUTTON_A.pixels(s)[(2 * BUTTON_A.w + 2) as usize];
    let before = corner(&crate::support::x11::screenshot(&display, W, H));
    let refused_before = refused_observer_inputs(&node).await;

    // The observer taps: the node answers `input_refused` once it has taken the tap off the
    // channel (so the tap reached the node and was dropped there, not lost on the way).
    tap(&observer, BUTTON_A.centre()).await;
    let answer = observer.pump_for(Duration::from_secs(5)).await;
    assert_eq!(
        answer,
        Some(NodeMessage::InputRefused {
            reason: InputRefusal::Observer
        })
    );
    // Both events of the tap (down, up) are counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while refused_observer_inputs(&node).await < refused_before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused taps were not counted"
        );
        observer.pump_for(Duration::from_millis(50)).await;
    }
    assert_eq!(
        corner(&crate::support::x11::screenshot(&display, W, H)),
        before,
        "an observer's tap changed the phone's screen"
    );
    // The observer still streams: its video is an owner's.
    observer.wait_frames(10, Duration::from_secs(10)).await;

    // The owner's identical tap changes the button's colour.
    tap(&owner, BUTTON_A.centre()).await;
    wait_screen(
        &mut owner,
        &display,
        "the owner's tap changed nothing",
        |s| corner(s) != before,
    )
    .await;
    // The owner was never told its input is refused, and nothing more was counted.
    assert_eq!(owner.pump_for(Duration::from_millis(200)).await, None);
    assert_eq!(refused_observer_inputs(&node).await, refused_before + 2);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_viewers_are_admitted_and_the_eleventh_is_refused() {
    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("i1", 720, 1280).await;
    authorize_owner_and_observer(&mut node, "i1").await;
    // Owners and observers count together: five of each is the phone's ten.
    let hello_as = |i: usize| {
        if i.is_multiple_of(2) {
            hello("dev-owner", "token-o", EncodingType::H264, Definition::P540)
        } else {
            hello(
                "dev-observer",
                "token-b",
                EncodingType::H264,
                Definition::P540,
            )
        }
    };
    let mut admitted = Vec::new();
    for i in 0..10 {
        let mut s = Signaling::connect(&node.ws_url).await;
        s.send(&ClientMessage::Hello(hello_as(i))).await;
        let ready = s.recv().await;
        assert!(
            matches!(ready, Some(NodeMessage::Ready { .. })),
            "viewer {} refused: {ready:?}",
            i + 1
        );
        admitted.push(s);
    }
    // The eleventh hears why at hello, before any offer or media, and the socket closes.
    let mut eleventh = Signaling::connect(&node.ws_url).await;
    eleventh.send(&ClientMessage::Hello(hello_as(1))).await;
    match eleventh.recv().await {
        Some(NodeMessage::Error { code, message }) => {
            assert_eq!(code, ErrorCode::TooManyViewers);
            assert!(message.contains("10 viewers"), "{message}");
        }
        other => panic!("the eleventh viewer got {other:?}"),
    }
    assert_eq!(eleventh.recv().await, None, "the socket closes");

    // The cap counts live viewers: once one leaves, the next is admitted.
    drop(admitted.pop());
    let again = cloudphone_testkit::wait_for(
        "a place once a viewer left",
        Duration::from_secs(10),
        || {
            let url = node.ws_url.clone();
            async move {
                let mut s = Signaling::connect(&url).await;
                s.send(&ClientMessage::Hello(hello_as(0))).await;
                match s.recv().await {
                    Some(NodeMessage::Ready { .. }) => Some(s),
                    _ => None,
                }
            }
        },
    )
    .await;
    drop(again);
    drop(admitted);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_shows_an_observer_its_role_and_disables_its_input() {
    use cloudphone_testkit::browser::{Browser, workspace};
    use serde_json::json;

    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("i1", 720, 1280).await;
    node.authorize_as("i1", "dev-observer", "token-b", pb::ViewerRole::Observer)
        .await
        .unwrap();
    let player = workspace()
        .join("crates/cloudphone-control/assets/player.html")
        .canonicalize()
        .unwrap();
    let url = format!(
        "file://{}?signaling={}&device_id=dev-observer&device_token=token-b&codec=H264&definition=540P&network=WIFI&autoconnect=1",
        player.display(),
        node.ws_url
    );
    let mut browser = Browser::start(&url, &[]).await;
    // An observer's video is an owner's.
    let playing = browser
        .call(json!({"cmd":"wait_frames","n":10,"timeout_ms":30000}))
        .await;
    assert_eq!(playing["ok"], true, "{playing}");
    let shown = browser
        .call(json!({"cmd":"text","selector":"#roleShown"}))
        .await;
    assert_eq!(shown["text"], "(observer)", "{shown}");
    let disabled = browser
        .call(json!({"cmd":"eval","expr":
            "[...document.querySelectorAll('#phone button, #text')].map((e) => e.disabled)"}))
        .await;
    assert_eq!(
        disabled["value"],
        json!([true, true, true, true]),
        "{disabled}"
    );
    // A click on the video sends nothing: the node has nothing to refuse.
    let tapped = browser.call(json!({"cmd":"tap","x":0.5,"y":0.5})).await;
    assert_eq!(tapped["ok"], true, "{tapped}");
    let stats = browser.call(json!({"cmd":"stats"})).await;
    assert_eq!(stats["status"], "connected", "{stats}");
    assert_eq!(refused_observer_inputs(&node).await, 0);
    browser.quit().await;
    node.shutdown().await;
}
