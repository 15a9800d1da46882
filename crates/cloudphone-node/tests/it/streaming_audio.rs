//! Sound end to end: an instance's audio reaches a webrtc-rs viewer as an Opus track in the same
//! peer connection as the video, is decoded with GStreamer and carries the tone the instance
//! plays; and the audio-video offset a viewer sees, measured on flashes and beeps made at the
//! same instants.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudphone_node::runtime::synthetic::SYNTHETIC_TONE_HZ;
use cloudphone_node::streaming::pipeline::FLASH_PATTERN;

use crate::support::streaming::{AUDIO_RATE, Node, RustViewer};

/// The frequency of `samples` from rising zero crossings (a sine has one a period): the median
/// period, so a few glitched periods (a capture or playback underrun on a loaded host) do not
/// move it.
pub(crate) fn zero_crossing_hz(samples: &[i16]) -> f64 {
    let rising: Vec<usize> = samples
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0 && w[1] >= 0)
        .map(|(i, _)| i)
        .collect();
    let mut periods: Vec<usize> = rising.windows(2).map(|w| w[1] - w[0]).collect();
    if periods.is_empty() {
        return 0.0;
    }
    periods.sort_unstable();
    // Periods are whole samples (72 or 73 at 660 Hz): the mean of the middle half of the sorted
    // periods is within 0.5 % for tones under 1 kHz.
    let middle = &periods[periods.len() / 4..periods.len() * 3 / 4 + 1];
    let mean = middle.iter().sum::<usize>() as f64 / middle.len() as f64;
    AUDIO_RATE as f64 / mean
}

/// Pumps `viewer` until it has decoded `seconds` of sound.
pub(crate) async fn wait_audio(viewer: &mut RustViewer, seconds: f64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let want = (seconds * AUDIO_RATE as f64) as usize;
    loop {
        let have = viewer.counters.audio.samples.lock().unwrap().len();
        if have >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {have} audio samples ({} packets) in {within:?}",
            viewer.counters.audio.packets.load(Ordering::Relaxed)
        );
        if let Some(m) = viewer.pump_for(Duration::from_millis(100)).await {
            panic!("unexpected node message while waiting for sound: {m:?}");
        }
    }
}

/// Asserts the last second of decoded sound is a tone of `hz` (within 2 %); returns what it was.
pub(crate) fn assert_tone(viewer: &RustViewer, hz: u32) -> f64 {
    let samples = viewer.counters.audio.samples.lock().unwrap();
    let tail = &samples[samples.len() - AUDIO_RATE..];
    let peak = tail.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    assert!(peak > 1000, "the sound is near silence (peak {peak})");
    let measured = zero_crossing_hz(tail);
    let error = (measured - f64::from(hz)).abs() / f64::from(hz);
    assert!(
        error <= 0.02,
        "tone {measured:.1} Hz, expected {hz} Hz ±2 %"
    );
    measured
}

/// A synthetic instance's 440 Hz tone arrives as an Opus track (48 kHz stereo, negotiated in the
/// same answer as the video) and decodes to 440 Hz within 2 %, while video frames decode too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_tone_arrives_as_opus_next_to_the_video() {
    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("a1", 360, 640).await;
    node.open_session("a1", "dev-a", "token-a").await;
    let mut viewer = node.audio_viewer("dev-a", "token-a").await;
    let answer = viewer.pc.remote_description().await.unwrap().sdp;
    assert!(answer.contains("opus/48000/2"), "answer: {answer}");
    assert!(answer.contains("H264/90000"), "answer: {answer}");
    wait_audio(&mut viewer, 2.0, Duration::from_secs(20)).await;
    viewer.wait_frames(10, Duration::from_secs(10)).await;
    let hz = assert_tone(&viewer, SYNTHETIC_TONE_HZ);
    let packets = viewer.counters.audio.packets.load(Ordering::Relaxed);
    eprintln!("synthetic tone: {hz:.1} Hz decoded from {packets} Opus packets");
    drop(viewer);
    node.shutdown().await;
}

/// Onsets: indices where `loud(i)` becomes true after being false.
fn onsets(n: usize, loud: impl Fn(usize) -> bool) -> Vec<usize> {
    (1..n).filter(|&i| loud(i) && !loud(i - 1)).collect()
}

/// The audio-video offset a viewer sees: a synthetic instance with the flash pattern turns its
/// screen white and beeps at the same instants (whole seconds of the node's monotonic clock);
/// the viewer notes when each flash frame and each beep come out of its decoders. The median
/// offset (sound minus picture) must be within 80 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_video_offset_is_within_80_ms() {
    let mut node = Node::start("synthetic", |c| {
        c.webrtc.synthetic_pattern = FLASH_PATTERN.into();
    })
    .await;
    node.create_instance("a2", 360, 640).await;
    node.open_session("a2", "dev-s", "token-s").await;
    let mut viewer = node.audio_viewer("dev-s", "token-s").await;
    wait_audio(&mut viewer, 7.0, Duration::from_secs(30)).await;

    let audio = &viewer.counters.audio;
    let beeps: Vec<Instant> = {
        let samples = audio.samples.lock().unwrap();
        let buffers = audio.buffers.lock().unwrap();
        // 5 ms blocks: loud when their peak is well above Opus's noise floor.
        const BLOCK: usize = AUDIO_RATE / 200;
        let blocks = samples.len() / BLOCK;
        let loud = |b: usize| {
            samples[b * BLOCK..(b + 1) * BLOCK]
                .iter()
                .any(|s| s.unsigned_abs() > 4000)
        };
        onsets(blocks, loud)
            .into_iter()
            .filter_map(|b| {
                let index = b * BLOCK;
                let &(at, start) = buffers.iter().rev().find(|(_, start)| *start <= index)?;
                Some(at + Duration::from_secs_f64((index - start) as f64 / AUDIO_RATE as f64))
            })
            .collect()
    };
    let flashes: Vec<Instant> = {
        let luma = audio.luma.lock().unwrap();
        onsets(luma.len(), |i| luma[i].1 > 128)
            .into_iter()
            .map(|i| luma[i].0)
            .collect()
    };
    let mut offsets_ms: Vec<f64> = flashes
        .iter()
        .filter_map(|&flash| {
            beeps
                .iter()
                .map(|&beep| {
                    if beep >= flash {
                        (beep - flash).as_secs_f64() * 1e3
                    } else {
                        -((flash - beep).as_secs_f64() * 1e3)
                    }
                })
                .filter(|ms| ms.abs() < 500.0)
                .min_by(|a, b| a.abs().total_cmp(&b.abs()))
        })
        .collect();
    assert!(
        offsets_ms.len() >= 4,
        "paired only {} flashes ({} flashes, {} beeps)",
        offsets_ms.len(),
        flashes.len(),
        beeps.len()
    );
    offsets_ms.sort_by(f64::total_cmp);
    let median = offsets_ms[offsets_ms.len() / 2];
    eprintln!(
        "audio-video offset (sound − picture at the viewer's decoders): median {median:.1} ms over {} flashes: {offsets_ms:.1?}",
        offsets_ms.len()
    );
    assert!(median.abs() <= 80.0, "audio-video offset {median:.1} ms");
    drop(viewer);
    node.shutdown().await;
}

/// An x11 instance's app plays a 660 Hz tone into the instance's own PulseAudio server (its
/// launcher runs `gst-launch-1.0 audiotestsrc freq=660 ! pulsesink` next to xeyes, as any app
/// in the sandbox would, through `PULSE_SERVER`); the node captures the null sink's monitor and
/// the viewer decodes 660 Hz within 2 %. The server runs as the instance's user, its pid is in
/// pids.json, and it is gone once the instance stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x11_app_sound_reaches_the_viewer() {
    let mut node = Node::start("x11", |c| {
        c.x11.launcher = "gst-launch-1.0 -q audiotestsrc freq=660 is-live=true ! pulsesink & \
                          exec xeyes -geometry ${WIDTH}x${HEIGHT}+0+0"
            .into();
    })
    .await;
    node.create_instance("x3", 360, 640).await;
    let pids: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.dir.path().join("instances/x3/pids.json")).unwrap(),
    )
    .unwrap();
    let pulse_pid = pids["pulse"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("a sound server in pids.json: {pids}"));
    node.open_session("x3", "dev-x", "token-x").await;
    let mut viewer = node.audio_viewer("dev-x", "token-x").await;
    wait_audio(&mut viewer, 2.5, Duration::from_secs(30)).await;
    let hz = assert_tone(&viewer, 660);
    eprintln!("x11 app tone through PulseAudio: {hz:.1} Hz");

    // The last viewer leaves right before StopInstance: the stop waits for the captures that
    // leave started stopping (the display and the sound server outlive them).
    drop(viewer);
    node.grpc
        .stop_instance(cloudphone_proto::node_v1::InstanceRef {
            instance_id: "x3".into(),
        })
        .await
        .unwrap();
    cloudphone_testkit::wait_for(
        "the sound server to exit",
        Duration::from_secs(10),
        || async { (!std::path::Path::new(&format!("/proc/{pulse_pid}")).exists()).then_some(()) },
    )
    .await;
    node.shutdown().await;
}

/// Headless Chromium plays a synthetic instance through the real player page: `getStats` shows
/// the Opus track's packets received and its samples decoded (with little concealment, i.e.
/// real audio rather than packet-loss filler); the page starts muted and the first tap unmutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_decodes_the_opus_track_and_unmutes_on_the_first_gesture() {
    use cloudphone_testkit::browser::Browser;
    use serde_json::json;

    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("a4", 360, 640).await;
    node.open_session("a4", "dev-b", "token-b").await;
    let mut browser = Browser::start(&node.player_page("dev-b", "token-b"), &[]).await;
    let playing = browser
        .call(json!({"cmd":"wait_frames","n":30,"timeout_ms":30000}))
        .await;
    assert_eq!(playing["ok"], true, "{playing}");
    let muted = browser
        .call(json!({"cmd":"eval","expr":"document.getElementById('video').muted"}))
        .await;
    assert_eq!(muted["value"], true, "the page starts muted: {muted}");
    let tapped = browser.call(json!({"cmd":"tap","x":0.5,"y":0.5})).await;
    assert_eq!(tapped["ok"], true, "{tapped}");
    let muted = browser
        .call(json!({"cmd":"eval","expr":"document.getElementById('video').muted"}))
        .await;
    assert_eq!(muted["value"], false, "the first tap unmutes: {muted}");

    let first = browser.call(json!({"cmd":"stats"})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = browser.call(json!({"cmd":"stats"})).await;
    let (a, b) = (&first["stats"]["audio"], &later["stats"]["audio"]);
    assert_eq!(b["codec"], "audio/opus", "{later}");
    let packets = b["packetsReceived"].as_u64().unwrap() - a["packetsReceived"].as_u64().unwrap();
    let samples =
        b["totalSamplesReceived"].as_u64().unwrap() - a["totalSamplesReceived"].as_u64().unwrap();
    let concealed =
        b["concealedSamples"].as_u64().unwrap() - a["concealedSamples"].as_u64().unwrap();
    eprintln!(
        "chromium audio over 2 s: {packets} Opus packets, {samples} samples decoded, {concealed} concealed, level {}",
        b["audioLevel"]
    );
    // 10 ms packets: ~200 in 2 s; 48 kHz: ~96 000 samples.
    assert!(packets >= 150, "{packets} packets in 2 s: {later}");
    assert!(samples >= 72_000, "{samples} samples in 2 s: {later}");
    assert!(
        concealed * 10 < samples,
        "{concealed} of {samples} concealed: {later}"
    );
    assert!(b["audioLevel"].as_f64().unwrap() > 0.05, "silent: {later}");
    browser.quit().await;
    node.shutdown().await;
}
