//! Headless Chromium as the glass-to-glass receiver: `tests/browser/glass.mjs` (playwright-core)
//! opens `tests/browser/glass.html`, which connects to the node's signaling over WebSocket, plays
//! the stream in a `<video>` and, on every `requestVideoFrameCallback`, draws the frame's
//! top-left corner to a canvas and reads the clock there (same layout as [`crate::clock`]).
//!
//! Per frame it reports, all against the drawn time (the browser and the clock share the host's
//! realtime clock; `performance.timeOrigin` + a frame timestamp is realtime):
//! - `glass_ms`: `expectedDisplayTime` (when Chromium expects the frame to be on screen: the
//!   compositor frame after it, i.e. up to one vsync later);
//! - extras `received` (`receiveTime`, the frame's last packet in), `presented`
//!   (`presentationTime`, the frame handed to the compositor), `callback` (when the page read the
//!   pixels: the figure closest to the Rust receivers' "decoded frame at the appsink"),
//!   `decode` (`processingDuration`), `receive_to_presented`, `presented_to_display`;
//! - `receiver_ms`: `expectedDisplayTime − receiveTime` (jitter buffer, decode, renderer,
//!   compositor);
//! - extras `avg_*`, one value each: libwebrtc's `inbound-rtp` counters averaged per frame over
//!   the window (`avg_jitter_buffer` = Δ`jitterBufferDelay` / Δ`jitterBufferEmittedCount`, its
//!   `_target` and `_minimum`, `avg_decode`, `avg_processing` = receive → decoded, `avg_assembly`);
//! - extra `count_unreadable_flat_grey`, one value: unreadable frames that were one flat
//!   mid-grey picture.
//!
//! The page reads the clock from the frame's luma plane (`new VideoFrame(video)` + `copyTo`), or
//! with `reader=canvas` in the page query through `drawImage` + `getImageData`.
//! `GLASS_DEBUG_DIR=<dir>` keeps the block means of the first unreadable frames there and a
//! screenshot of the page; `CHROMIUM_EXTRA_ARGS` adds browser flags (e.g. logging).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::glass_viewer::{Event, Receiver, ViewerRun, emit};

/// `tests/browser` (playwright-core and the pages), or `CLOUDPHONE_BROWSER_DIR`.
pub fn browser_dir() -> PathBuf {
    std::env::var_os("CLOUDPHONE_BROWSER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::parts::workspace_root().join("tests/browser"))
}

/// `npm ci` once, when playwright-core is missing.
fn ensure_playwright(dir: &Path) -> Result<()> {
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Ok(());
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .context("npm runs")?;
    if !status.success() {
        bail!("npm ci in {} failed", dir.display());
    }
    Ok(())
}

/// What `glass.html`'s `collect()` returns.
#[derive(Debug, Deserialize)]
struct PageResult {
    width: u32,
    height: u32,
    frames: u64,
    unreadable: u64,
    /// Frames the compositor never showed (gaps in `presentedFrames`).
    skipped: u64,
    glass: Vec<f64>,
    receiver: Vec<f64>,
    #[serde(default)]
    extra: BTreeMap<String, Vec<f64>>,
    #[serde(default)]
    notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum PageEvent {
    FirstFrame { ms: f64 },
    Measuring,
    Done { result: PageResult },
    Error { error: String },
}

/// Runs Chromium on `page_query` (glass.html's query string) and relays its events. Returns
/// as soon as the page has handed over its samples, with the driver still closing the browser
/// (wait for it after reporting, so the browser's CPU is still counted at `done`).
pub async fn run(
    page_query: &str,
    skip: Duration,
    seconds: Duration,
    first_frame_within: Duration,
) -> Result<(ViewerRun, tokio::process::Child)> {
    let dir = browser_dir();
    ensure_playwright(&dir)?;
    let page = dir
        .join("glass.html")
        .canonicalize()
        .context("glass.html")?;
    let mut url = format!("file://{}?{page_query}", page.display());
    // GLASS_DEBUG_DIR=<dir>: the page keeps its first unreadable corners, glass.mjs saves them.
    if std::env::var_os("GLASS_DEBUG_DIR").is_some() {
        url.push_str("&debug=1");
    }
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("glass.mjs"))
        .arg(&url)
        .arg(skip.as_millis().to_string())
        .arg(seconds.as_millis().to_string())
        .arg(first_frame_within.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("node runs glass.mjs")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let limit = skip + seconds + first_frame_within + Duration::from_secs(30);
    let mut first_frame_ms = f64::NAN;
    let result = tokio::time::timeout(limit, async {
        while let Some(line) = lines.next_line().await? {
            let Ok(ev) = serde_json::from_str::<PageEvent>(&line) else {
                eprintln!("glass.mjs: {line}");
                continue;
            };
            match ev {
                PageEvent::FirstFrame { ms } => {
                    first_frame_ms = ms;
                    emit(&Event::FirstFrame { ms });
                }
                PageEvent::Measuring => emit(&Event::Measuring),
                PageEvent::Done { result } => return Ok(result),
                PageEvent::Error { error } => bail!("chromium: {error}"),
            }
        }
        Err(anyhow!("glass.mjs ended without a result"))
    })
    .await
    .map_err(|_| anyhow!("chromium gave no result within {limit:?}"))??;
    let run = ViewerRun {
        receiver: Some(Receiver::Chromium),
        width: result.width,
        height: result.height,
        first_frame_ms,
        frames: result.frames,
        unreadable: result.unreadable,
        skipped: result.skipped,
        glass_ms: result.glass,
        receiver_ms: result.receiver,
        extra: result.extra,
        notes: result.notes,
    };
    Ok((run, child))
}
