//! The phone's features beyond screen and input (issue 16), against a real node and x11
//! instance: the clipboard both ways on the `input` data channel (owners only), screenshots
//! through the node's HTTP API and the data channel compared with the display, and files to and
//! from `/data` over HTTP: a 10 MiB round trip keeps its SHA-256, and traversal, absolute
//! paths, planted symlinks, oversize uploads, a full quota, observers and bad tokens are refused
//! with a 4xx and nothing written outside `/data`.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use base64::Engine as _;
use cloudphone_signaling::{
    ChannelEvent, ChannelRequest, Definition, EncodingType, InputRefusal, NodeMessage,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use webrtc::data_channel::data_channel_message::DataChannelMessage;

use crate::demo_app::{
    H, W, authorize_owner_and_observer, demo_phone, demo_phone_owner_and_observer, input_open,
    wait_app_drawn,
};
use crate::support::streaming::{Node, RustViewer, hello};
use crate::support::x11::{ClipboardOwner, read_clipboard, screenshot};

/// What the node sends `viewer` on its data channel, from now on.
fn channel_events(viewer: &RustViewer) -> mpsc::UnboundedReceiver<ChannelEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    viewer
        .input
        .on_message(Box::new(move |msg: DataChannelMessage| {
            let event: ChannelEvent = serde_json::from_slice(&msg.data).unwrap();
            let _ = tx.send(event);
            Box::pin(async {})
        }));
    rx
}

async fn send(viewer: &RustViewer, request: &ChannelRequest) {
    viewer
        .input
        .send_text(serde_json::to_string(request).unwrap())
        .await
        .unwrap();
}

/// Pumps `viewer` until `events` yields one `pick` accepts (others are skipped), or fails
/// naming `what`.
async fn wait_event<T>(
    viewer: &mut RustViewer,
    events: &mut mpsc::UnboundedReceiver<ChannelEvent>,
    what: &str,
    mut pick: impl FnMut(ChannelEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Ok(event) = events.try_recv() {
            if let Some(found) = pick(event) {
                return found;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        if let Some(m) = viewer.pump_for(Duration::from_millis(50)).await {
            panic!("unexpected node message while waiting for {what}: {m:?}");
        }
    }
}

/// Asks for a screenshot on the data channel and reassembles its chunks: the PNG and the size
/// the chunks announced.
async fn channel_screenshot(
    viewer: &mut RustViewer,
    events: &mut mpsc::UnboundedReceiver<ChannelEvent>,
    id: u32,
) -> (Vec<u8>, u32, u32) {
    send(viewer, &ChannelRequest::Screenshot { id }).await;
    let mut png = Vec::new();
    let mut next = 0;
    loop {
        let (seq, total, width, height, data) =
            wait_event(viewer, events, "screenshot chunks", |e| match e {
                ChannelEvent::ScreenshotChunk {
                    id: got,
                    seq,
                    total,
                    width,
                    height,
                    data,
                } if got == id => Some((seq, total, width, height, data)),
                ChannelEvent::ScreenshotFailed { message, .. } => {
                    panic!("screenshot failed: {message}")
                }
                _ => None,
            })
            .await;
        assert_eq!(seq, next, "chunks out of order");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        assert!(bytes.len() <= cloudphone_signaling::SCREENSHOT_CHUNK_BYTES);
        png.extend_from_slice(&bytes);
        next += 1;
        if next == total {
            return (png, width, height);
        }
    }
}

/// Decodes a PNG to `0xRRGGBB` pixels: the pixels, width and height.
fn decode_png(png: &[u8]) -> (Vec<u32>, u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels = buf[..info.buffer_size()]
        .chunks_exact(step)
        .map(|p| u32::from_be_bytes([0, p[0], p[1], p[2]]))
        .collect();
    (pixels, info.width, info.height)
}

/// Checks a PNG screenshot against the display's own pixels: native size, and at most 1 % of
/// pixels off by more than 16 in any channel (the text field's caret may blink in between).
fn assert_matches_display(png: &[u8], display: &str, how: &str) {
    let (pixels, width, height) = decode_png(png);
    assert_eq!((width, height), (W, H), "{how}: not the native size");
    let screen = screenshot(display, W, H);
    let off = pixels
        .iter()
        .enumerate()
        .filter(|&(i, &p)| {
            let s = &screen[i * 4..i * 4 + 3];
            let (r, g, b) = (s[2], s[1], s[0]);
            let channels = [(p >> 16) as u8, (p >> 8) as u8, p as u8];
            channels
                .iter()
                .zip([r, g, b])
                .any(|(&a, b)| a.abs_diff(b) > 16)
        })
        .count();
    let limit = pixels.len() / 100;
    assert!(
        off <= limit,
        "{how}: {off} of {} pixels differ from the display",
        pixels.len()
    );
    eprintln!(
        "{how}: {width}×{height} PNG of {} bytes, {off} pixels differ from the display",
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipboard_goes_both_ways_for_owners_and_never_to_observers() {
    let (node, display, mut owner, mut observer) = demo_phone_owner_and_observer().await;
    wait_app_drawn(&mut owner, &display).await;
    input_open(&mut owner).await;
    input_open(&mut observer).await;
    let mut owner_events = channel_events(&owner);
    let mut observer_events = channel_events(&observer);

    // An app in the phone copies: the owner's player hears it.
    let copied = "copied in the phone: héllo ✓";
    let app = ClipboardOwner::copy(&display, copied);
    let (text, truncated) = wait_event(
        &mut owner,
        &mut owner_events,
        "the phone's copy never reached the owner",
        |e| match e {
            ChannelEvent::Clipboard { text, truncated } => Some((text, truncated)),
            _ => None,
        },
    )
    .await;
    assert_eq!((text.as_str(), truncated), (copied, false));
    // The observer, watching the same phone, is not told.
    assert_eq!(observer.pump_for(Duration::from_millis(500)).await, None);
    assert!(
        observer_events.try_recv().is_err(),
        "an observer received the clipboard"
    );

    // The owner's player pastes into the phone: an app pasting now gets the player's text.
    let pasted = "from the player, 1 2 3";
    send(
        &owner,
        &ChannelRequest::Clipboard {
            text: pasted.into(),
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let d = display.clone();
        let now = tokio::task::spawn_blocking(move || read_clipboard(&d))
            .await
            .unwrap();
        if now.as_deref() == Some(pasted) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the phone's clipboard is {now:?}, not the player's text"
        );
        owner.pump_for(Duration::from_millis(50)).await;
    }
    drop(app);
    // The node's own copy is not echoed back to the owner as if the phone had copied it.
    owner.pump_for(Duration::from_millis(300)).await;
    assert!(
        !matches!(owner_events.try_recv(), Ok(ChannelEvent::Clipboard { .. })),
        "the player's own text came back as a phone copy"
    );

    // An observer may not write the clipboard: refused like its input, nothing changes.
    send(
        &observer,
        &ChannelRequest::Clipboard {
            text: "observer was here".into(),
        },
    )
    .await;
    assert_eq!(
        observer.pump_for(Duration::from_secs(5)).await,
        Some(NodeMessage::InputRefused {
            reason: InputRefusal::Observer
        })
    );
    let d = display.clone();
    let now = tokio::task::spawn_blocking(move || read_clipboard(&d))
        .await
        .unwrap();
    assert_eq!(now.as_deref(), Some(pasted));
    drop((owner, observer));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_through_the_api_and_the_data_channel_equal_the_display() {
    let (mut node, display) = demo_phone().await;
    authorize_owner_and_observer(&mut node, "demo").await;
    let mut owner = RustViewer::connect(
        &node.ws_url,
        hello("dev-owner", "token-o", EncodingType::H264, Definition::P540),
    )
    .await
    .unwrap();
    wait_app_drawn(&mut owner, &display).await;
    input_open(&mut owner).await;
    // Noise over the lower third: a PNG of the screen then takes many chunks.
    let d = display.clone();
    let _noise = tokio::task::spawn_blocking(move || {
        crate::support::x11::noise_window(&d, 0, 440, W as u16, 200)
    })
    .await
    .unwrap();

    // The API: owners and observers alike (an observer sees the screen anyway).
    let client = reqwest::Client::new();
    let url = |device: &str| format!("http://{}/v1/devices/{device}/screenshot", node.http);
    for (device, token) in [("dev-owner", "token-o"), ("dev-observer", "token-b")] {
        let response = client
            .get(url(device))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "image/png");
        let png = response.bytes().await.unwrap();
        assert_matches_display(&png, &display, &format!("API screenshot for {device}"));
    }
    // A wrong token, an unknown device, no token: refused before anything is captured.
    for (device, token) in [
        ("dev-owner", Some("token-b")),
        ("dev-nobody", Some("token-o")),
        ("dev-owner", None),
    ] {
        let mut request = client.get(url(device));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{device} {token:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_token");
    }

    // The data channel: the PNG in chunks of at most 12 000 bytes, reassembled.
    let mut events = channel_events(&owner);
    let (png, width, height) = channel_screenshot(&mut owner, &mut events, 42).await;
    assert_eq!((width, height), (W, H));
    assert!(
        png.len() > 4 * cloudphone_signaling::SCREENSHOT_CHUNK_BYTES,
        "{} bytes: too few chunks to test reassembly",
        png.len()
    );
    assert_matches_display(&png, &display, "data channel screenshot");
    drop(owner);
    node.shutdown().await;
}

const MIB: usize = 1 << 20;

/// `len` bytes that do not compress (a PNG-like payload would hide a truncation less well).
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks a refusal's status and `error` code.
async fn refused(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status, "{}", response.url());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
}

/// Sends only the head of a PUT announcing `length` bytes and reads the node's answer: its
/// status and body.
async fn announce_put(
    http: std::net::SocketAddr,
    path: &str,
    token: &str,
    length: usize,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("no answer to the announced upload")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// The names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_to_data_and_attacks_on_the_boundary_are_refused() {
    // 16 MiB per file (the sandbox's own file size limit), 40 MiB in all.
    let mut node = Node::start("x11", |c| {
        c.sandbox.file_size_max_mib = 16;
        c.sandbox.data_max_mib = 40;
    })
    .await;
    node.create_instance("files", W, H).await;
    authorize_owner_and_observer(&mut node, "files").await;
    let root = node.dir.path().join("instances/files");
    let data = root.join("data");
    let client = reqwest::Client::new();
    let url =
        |device: &str, path: &str| format!("http://{}/v1/devices/{device}/files/{path}", node.http);
    let put = |device: &str, token: &str, path: &str, body: Vec<u8>| {
        client
            .put(url(device, path))
            .bearer_auth(token)
            .body(body)
            .send()
    };
    let get = |device: &str, token: &str, path: &str| {
        client.get(url(device, path)).bearer_auth(token).send()
    };

    // 10 MiB up and down again: the same SHA-256 at every step, owned by the instance.
    let big = payload(10 * MIB, 1);
    let response = put("dev-owner", "token-o", "Download/big.bin", big.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["sha256"], sha256(&big));
    assert_eq!(body["size"], big.len());
    let on_disk = data.join("Download/big.bin");
    assert_eq!(sha256(&std::fs::read(&on_disk).unwrap()), sha256(&big));
    let data_uid = std::fs::metadata(&data).unwrap().uid();
    assert_eq!(std::fs::metadata(&on_disk).unwrap().uid(), data_uid);
    assert_eq!(
        std::fs::metadata(data.join("Download")).unwrap().uid(),
        data_uid
    );
    let response = get("dev-owner", "token-o", "Download/big.bin")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(big.len() as u64));
    let down = response.bytes().await.unwrap();
    assert_eq!(sha256(&down), sha256(&big));
    eprintln!(
        "files: 10 MiB round trip, sha256 {} both ways",
        &sha256(&big)[..16]
    );

    // Outside /data: a dir of the host's, and a symlink to it (and to a file in it) planted
    // inside /data as the phone could.
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"host secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), data.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), data.join("secret")).unwrap();
    let before_root = names(&root);
    let small = b"pwned".to_vec();

    // An upload to `path` and a download of it, both refused with `status` and `code`.
    let refused_both_ways = |path: &'static str, status: u16, code: &'static str| {
        let small = small.clone();
        async move {
            refused(
                put("dev-owner", "token-o", path, small).await.unwrap(),
                status,
                code,
            )
            .await;
            refused(
                get("dev-owner", "token-o", path).await.unwrap(),
                status,
                code,
            )
            .await;
        }
    };
    // `..` (sent encoded so the client does not resolve it), absolute paths, empty parts.
    for path in [
        "..%2Fpwned",
        "Download%2F..%2F..%2Fpwned",
        "%2Fetc%2Fpwned",
        "%2Fvar%2Ftmp%2Fpwned",
        "a%2F%2Fb",
        "a%2F.%2Fb",
    ] {
        refused_both_ways(path, 400, "bad_path").await;
    }
    // Through the planted symlinks, both ways, and onto them.
    for path in ["escape/pwned", "escape/secret.txt", "secret"] {
        refused_both_ways(path, 403, "symlink").await;
    }
    refused(
        get("dev-owner", "token-o", "nothing-here").await.unwrap(),
        404,
        "not_found",
    )
    .await;
    refused(
        get("dev-owner", "token-o", "Download").await.unwrap(),
        409,
        "not_a_file",
    )
    .await;

    // Larger than the 16 MiB a file may be: refused from its Content-Length, before any byte
    // of it is taken (so sent by hand: the client must not be mid-body when refused).
    let (status, body) = announce_put(
        node.http,
        "/v1/devices/dev-owner/files/huge.bin",
        "token-o",
        17 * MIB,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"too_large\""), "{body}");
    // Within the file limit but past the 40 MiB quota: the third 15 MiB file does not fit.
    let mut quota_hit = false;
    for n in 0..3 {
        let response = put(
            "dev-owner",
            "token-o",
            &format!("fill-{n}.bin"),
            payload(15 * MIB, 10 + n),
        )
        .await
        .unwrap();
        if response.status() == 201 {
            continue;
        }
        refused(response, 413, "quota").await;
        assert!(!data.join(format!("fill-{n}.bin")).exists());
        quota_hit = true;
        break;
    }
    assert!(quota_hit, "40 MiB of quota took 10 + 45 MiB");

    // Observers and wrong tokens reach no file.
    refused(
        put("dev-observer", "token-b", "obs.txt", small.clone())
            .await
            .unwrap(),
        403,
        "observer",
    )
    .await;
    refused(
        get("dev-observer", "token-b", "Download/big.bin")
            .await
            .unwrap(),
        403,
        "observer",
    )
    .await;
    refused(
        put("dev-owner", "token-b", "x.txt", small.clone())
            .await
            .unwrap(),
        401,
        "bad_token",
    )
    .await;

    // Nothing was written outside /data, nothing half-written inside it.
    assert_eq!(names(outside.path()), ["secret.txt"]);
    assert_eq!(
        std::fs::read(outside.path().join("secret.txt")).unwrap(),
        b"host secret"
    );
    assert_eq!(names(&root), before_root);
    assert!(!std::path::Path::new("/etc/pwned").exists());
    assert!(!std::path::Path::new("/var/tmp/pwned").exists());
    let leftovers: Vec<String> = names(&data)
        .into_iter()
        .filter(|n| n.starts_with(".cloudphone-upload-") || n == "huge.bin" || n == "obs.txt")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(sha256(&std::fs::read(&on_disk).unwrap()), sha256(&big));
    node.shutdown().await;
}

/// The player's own buttons in Chromium against the demo phone: a copy in the phone shows in
/// the player's clipboard box (and its `cloudphone-clipboard` event's state), "Paste to phone"
/// sets the phone's clipboard, "Screenshot" saves a native-size PNG from the data channel, and
/// "Upload" / the download path move a file to and from `/data` across origins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_players_buttons_reach_the_phone() {
    use cloudphone_testkit::browser::{Browser, workspace};
    use serde_json::json;

    let (mut node, display) = demo_phone().await;
    node.open_session("demo", "dev-p", "token-p").await;
    let player = workspace()
        .join("crates/cloudphone-control/assets/player.html")
        .canonicalize()
        .unwrap();
    let url = format!(
        "file://{}?signaling={}&device_id=dev-p&device_token=token-p&codec=H264&definition=540P&network=WIFI&autoconnect=1",
        player.display(),
        node.ws_url
    );
    let mut browser = Browser::start(&url, &[]).await;
    let playing = browser
        .call(json!({"cmd":"wait_frames","n":5,"timeout_ms":30000}))
        .await;
    assert_eq!(playing["ok"], true, "{playing}");
    async fn until(browser: &mut Browser, expr: &str, want: serde_json::Value, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = browser.call(json!({"cmd":"eval","expr":expr})).await;
            if got["value"] == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {got}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    until(
        &mut browser,
        "window.cloudphone.dc && window.cloudphone.dc.readyState",
        json!("open"),
        "the input channel never opened",
    )
    .await;

    // Copied in the phone → the player's clipboard box.
    let app = ClipboardOwner::copy(&display, "from the phone to the player");
    until(
        &mut browser,
        "[window.cloudphone.clipboard, document.getElementById('clipboard').value]",
        json!([
            "from the phone to the player",
            "from the phone to the player"
        ]),
        "the phone's copy never showed in the player",
    )
    .await;
    drop(app);

    // "Paste to phone" → the phone's clipboard.
    browser
        .ok(json!({"cmd":"eval","expr":"(() => { document.getElementById('clipboard').value = 'typed in the player'; document.getElementById('pasteBtn').click(); return true; })()"}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let d = display.clone();
        let now = tokio::task::spawn_blocking(move || read_clipboard(&d))
            .await
            .unwrap();
        if now.as_deref() == Some("typed in the player") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the player's paste left the phone's clipboard at {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // "Screenshot": a PNG of the phone's native size, reassembled in the page.
    browser
        .ok(json!({"cmd":"eval","expr":"(() => { document.getElementById('shotBtn').click(); return true; })()"}))
        .await;
    until(
        &mut browser,
        "window.cloudphone.screenshots.map((s) => [s.width, s.height, s.size > 1000])",
        json!([[W, H, true]]),
        "the player saved no screenshot",
    )
    .await;

    // "Upload" of a picked file to /data, then the same path downloaded from the node.
    browser
        .ok(json!({"cmd":"eval","expr":"(() => { \
            const bytes = new Uint8Array(1 << 20).map((_, i) => (i * 7) % 251); \
            const dt = new DataTransfer(); dt.items.add(new File([bytes], 'x.bin')); \
            document.getElementById('fileInput').files = dt.files; \
            document.getElementById('filePath').value = 'player/x.bin'; \
            document.getElementById('uploadBtn').click(); return true; })()"}))
        .await;
    let uploaded = node.dir.path().join("instances/demo/data/player/x.bin");
    let expected: Vec<u8> = (0..1usize << 20).map(|i| ((i * 7) % 251) as u8).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while std::fs::read(&uploaded).ok().as_deref() != Some(&expected[..]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the player's upload never landed in /data"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let downloaded = browser
        .call(json!({"cmd":"eval","expr":"nodeFetch('GET', '/files/player/x.bin').then((r) => r.arrayBuffer()).then((b) => { const a = new Uint8Array(b); return [a.length, a[1], a[a.length - 1]]; })"}))
        .await;
    assert_eq!(
        downloaded["value"],
        json!([1 << 20, 7, expected[(1 << 20) - 1]]),
        "{downloaded}"
    );
    // `CLOUDPHONE_PLAYER_SCREENSHOT=/path.png` keeps a picture of the player with the demo app
    // and its phone box (docs/img/demo-app-player.png is made so).
    if let Some(path) = std::env::var_os("CLOUDPHONE_PLAYER_SCREENSHOT") {
        browser
            .ok(json!({"cmd":"screenshot","path":path.to_string_lossy(),"full_page":true}))
            .await;
    }
    browser.quit().await;
    node.shutdown().await;
}
