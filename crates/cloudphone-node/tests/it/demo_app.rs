//! The demo phone's app (`crates/cloudphone-demo-app`) in a real x11 instance, run from the build
//! tree through `[sandbox] ro_binds` as `cargo xtask demo` runs it, and used the way a person
//! uses it through the player: text and keys typed on the `input` data channel show in its text
//! field, a tap changes a button's colour, and the tone button's sound reaches the viewer.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cloudphone_node::runtime::sandbox::RO_BIN_DIR;
use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::{Definition, EncodingType, InputMessage, TouchAction};
use webrtc::data_channel::data_channel_state::RTCDataChannelState;

use crate::streaming_audio::{wait_audio, zero_crossing_hz};
use crate::support::streaming::{AUDIO_RATE, Node, RustViewer, hello};

pub(crate) const W: u32 = 360;
pub(crate) const H: u32 = 640;
/// The app's tone (`tone::TONE_HZ` there).
const TONE_HZ: f64 = 880.0;

/// Where the app's controls are at 360×640 (its `ui::Layout`, whose own test pins it): the
/// text field's box, the first counting button's box, and the tone button's centre.
pub(crate) const FIELD: Region = Region {
    x: 15,
    y: 48,
    w: 330,
    h: 217,
};
pub(crate) const BUTTON_A: Region = Region {
    x: 15,
    y: 280,
    w: 105,
    h: 83,
};
const TONE: (u32, u32) = (180, 419);

/// A box of screen pixels.
#[derive(Clone, Copy)]
pub(crate) struct Region {
    pub(crate) x: u32,
    pub(crate) y: u32,
    pub(crate) w: u32,
    pub(crate) h: u32,
}

impl Region {
    pub(crate) fn centre(self) -> (u32, u32) {
        (self.x + self.w / 2, self.y + self.h / 2)
    }

    /// The region's pixels (`0xRRGGBB`) out of a 32-bit Z-pixmap screenshot of the screen.
    pub(crate) fn pixels(self, screen: &[u8]) -> Vec<u32> {
        (self.y..self.y + self.h)
            .flat_map(|y| (self.x..self.x + self.w).map(move |x| (x, y)))
            .map(|(x, y)| {
                let at = ((y * W + x) * 4) as usize;
                u32::from_le_bytes([screen[at], screen[at + 1], screen[at + 2], 0])
            })
            .collect()
    }
}

/// The app's binary, built once per test process (`cargo build` is a no-op when it is fresh).
pub(crate) fn demo_app() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = cloudphone_testkit::process::workspace_root();
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            let status = std::process::Command::new(env!("CARGO"))
                .current_dir(&root)
                .args(["build", "--quiet", "-p", "cloudphone-demo-app"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building cloudphone-demo-app failed");
            target.join("debug/cloudphone-demo-app")
        })
        .clone()
}

/// A node whose x11 instance `demo` (W×H) runs the demo app: the node and the instance's X
/// display (`:N`).
pub(crate) async fn demo_phone() -> (Node, String) {
    let app = demo_app();
    let mut node = Node::start("x11", |c| {
        c.sandbox
            .ro_binds
            .insert("cloudphone-demo-app".into(), app.clone());
        c.x11.launcher = format!("exec {RO_BIN_DIR}/cloudphone-demo-app");
    })
    .await;
    node.create_instance("demo", W, H).await;
    let pids: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.dir.path().join("instances/demo/pids.json")).unwrap(),
    )
    .unwrap();
    let display = format!(":{}", pids["display"].as_u64().expect("a display"));
    (node, display)
}

/// Grants on `instance` for an owner (`dev-owner`, `token-o`) and an observer (`dev-observer`,
/// `token-b`).
pub(crate) async fn authorize_owner_and_observer(node: &mut Node, instance: &str) {
    node.authorize_as(instance, "dev-owner", "token-o", pb::ViewerRole::Owner)
        .await
        .unwrap();
    node.authorize_as(
        instance,
        "dev-observer",
        "token-b",
        pb::ViewerRole::Observer,
    )
    .await
    .unwrap();
}

/// [`demo_phone`] with two viewers connected at 540P: an owner (`dev-owner`) and an observer
/// (`dev-observer`). Returns the node, the display, the owner and the observer.
pub(crate) async fn demo_phone_owner_and_observer() -> (Node, String, RustViewer, RustViewer) {
    let (mut node, display) = demo_phone().await;
    authorize_owner_and_observer(&mut node, "demo").await;
    let connect = |device: &str, token: &str| {
        RustViewer::connect(
            &node.ws_url,
            hello(device, token, EncodingType::H264, Definition::P540),
        )
    };
    let owner = connect("dev-owner", "token-o").await.unwrap();
    let observer = connect("dev-observer", "token-b").await.unwrap();
    (node, display, owner, observer)
}

pub(crate) async fn send(viewer: &RustViewer, message: &InputMessage) {
    viewer
        .input
        .send_text(serde_json::to_string(message).unwrap())
        .await
        .unwrap();
}

pub(crate) async fn tap(viewer: &RustViewer, (x, y): (u32, u32)) {
    for action in [TouchAction::Down, TouchAction::Up] {
        send(
            viewer,
            &InputMessage::Touch {
                action,
                pointer_id: 0,
                x: (f64::from(x) + 0.5) / f64::from(W),
                y: (f64::from(y) + 0.5) / f64::from(H),
            },
        )
        .await;
    }
}

/// Pumps `viewer` until `check` holds on a screenshot of `display`, or fails naming `what`.
pub(crate) async fn wait_screen(
    viewer: &mut RustViewer,
    display: &str,
    what: &str,
    check: impl Fn(&[u8]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if check(&crate::support::x11::screenshot(display, W, H)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        if let Some(m) = viewer.pump_for(Duration::from_millis(50)).await {
            panic!("unexpected node message: {m:?}");
        }
    }
}

/// Pumps `viewer` until the demo app on `display` has drawn its (white) text field.
pub(crate) async fn wait_app_drawn(viewer: &mut RustViewer, display: &str) {
    wait_screen(viewer, display, "the app never drew its text field", |s| {
        let (x, y) = FIELD.centre();
        Region { x, y, w: 1, h: 1 }.pixels(s) == [0xff_ff_ff]
    })
    .await;
}

/// Pumps `viewer` until its input channel is open.
pub(crate) async fn input_open(viewer: &mut RustViewer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while viewer.input.ready_state() != RTCDataChannelState::Open {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the input channel never opened"
        );
        viewer.pump_for(Duration::from_millis(50)).await;
    }
}

/// Peak of `samples`.
fn peak(samples: &[i16]) -> u16 {
    samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_app_shows_typing_reacts_to_taps_and_plays_its_tone() {
    let (mut node, display) = demo_phone().await;
    node.open_session("demo", "dev-d", "token-d").await;
    let mut viewer = RustViewer::connect_audio(
        &node.ws_url,
        hello("dev-d", "token-d", EncodingType::H264, Definition::P540),
    )
    .await
    .unwrap();

    // The app is up: its text field is white and empty but for the hint.
    wait_app_drawn(&mut viewer, &display).await;
    input_open(&mut viewer).await;
    let screen = crate::support::x11::screenshot(&display, W, H);
    let field_before = FIELD.pixels(&screen);
    let button_before = BUTTON_A.pixels(&screen);

    // "hello": the first three letters as a text event, then the rest as key presses; each
    // part adds ink to the field (typed text is near black, the hint grey).
    let dark = |pixels: &[u32]| pixels.iter().filter(|&&p| p == 0x10_10_10).count();
    let dark_before = dark(&field_before);
    send(&viewer, &InputMessage::Text { text: "hel".into() }).await;
    wait_screen(
        &mut viewer,
        &display,
        "the text event did not show in the field",
        |s| dark(&FIELD.pixels(s)) > dark_before + 100,
    )
    .await;
    let dark_text = dark(&FIELD.pixels(&crate::support::x11::screenshot(&display, W, H)));
    for code in ["KeyL", "KeyO"] {
        for down in [true, false] {
            send(
                &viewer,
                &InputMessage::Key {
                    code: code.into(),
                    down,
                },
            )
            .await;
        }
    }
    wait_screen(
        &mut viewer,
        &display,
        "key presses did not show in the field",
        |s| dark(&FIELD.pixels(s)) > dark_text + 50,
    )
    .await;

    tap(&viewer, BUTTON_A.centre()).await;
    // A corner of the button, away from its labels: the button's colour.
    let corner = |pixels: &[u32]| pixels[(2 * BUTTON_A.w + 2) as usize];
    let colour_before = corner(&button_before);
    wait_screen(
        &mut viewer,
        &display,
        "the tapped button kept its colour",
        |s| {
            let colour = corner(&BUTTON_A.pixels(s));
            colour != colour_before && colour != 0x12_1a_24
        },
    )
    .await;

    // Silence before the tone button is tapped; its tone after.
    wait_audio(&mut viewer, 0.5, Duration::from_secs(20)).await;
    let quiet_until = {
        let samples = viewer.counters.audio.samples.lock().unwrap();
        let tail = &samples[samples.len() - AUDIO_RATE / 2..];
        assert!(
            peak(tail) < 1000,
            "sound before the tone: peak {}",
            peak(tail)
        );
        samples.len()
    };
    tap(&viewer, TONE).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // 5 ms blocks from the tap on; the tone is the first run of 300 ms of loud blocks.
    const BLOCK: usize = AUDIO_RATE / 200;
    let tone: Vec<i16> = loop {
        {
            let samples = viewer.counters.audio.samples.lock().unwrap();
            let after = &samples[quiet_until..];
            let loud: Vec<bool> = after.chunks_exact(BLOCK).map(|b| peak(b) > 1000).collect();
            let run = loud.iter().position(|&l| l).map(|start| {
                let len = loud[start..].iter().take_while(|&&l| l).count();
                (start, len)
            });
            if let Some((start, len)) = run
                && len * BLOCK >= AUDIO_RATE * 3 / 10
            {
                break after[start * BLOCK..(start + len) * BLOCK].to_vec();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tone button made no sound at the viewer"
        );
        if let Some(m) = viewer.pump_for(Duration::from_millis(100)).await {
            panic!("unexpected node message: {m:?}");
        }
    };
    let hz = zero_crossing_hz(&tone);
    assert!(
        (hz - TONE_HZ).abs() / TONE_HZ <= 0.02,
        "tone {hz:.1} Hz, expected {TONE_HZ} Hz ±2 %"
    );
    eprintln!(
        "demo app: typed text and a tap showed on screen; its tone decoded at {hz:.1} Hz ({} ms heard so far)",
        tone.len() * 1000 / AUDIO_RATE
    );
    drop(viewer);
    node.shutdown().await;
}
