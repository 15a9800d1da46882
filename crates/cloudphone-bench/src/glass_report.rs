//! The glass-to-glass part of `REPORT.md` (loopback cells per receiver, the per-stage breakdown,
//! time to first frame) and its target, kept apart from `report.rs` so that the other sections
//! change independently.

use std::fmt::Write as _;

use crate::glass::{GlassCell, GlassResults};
use crate::glass_viewer::Receiver;
use crate::stats::Summary;

const CELL_720: &str = "H264 720P30";

fn extra(c: &GlassCell, key: &str) -> Option<f64> {
    c.extra.get(key).map(|s| s.p50).filter(|v| v.is_finite())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

fn receiver_name(r: Receiver) -> &'static str {
    match r {
        Receiver::WebrtcRs => "webrtc-rs",
        Receiver::Webrtcbin => "webrtcbin",
        Receiver::Chromium => "Chromium",
    }
}

/// The H.264 720P30 loopback target: every receiver's p50 within `limit_ms`.
pub fn target_720p(g: &GlassResults, limit_ms: f64) -> Option<(String, bool)> {
    let cells: Vec<&GlassCell> = g
        .cells
        .iter()
        .filter(|c| c.label == CELL_720 && c.network == "loopback")
        .collect();
    if cells.is_empty() {
        return None;
    }
    let p50s = cells
        .iter()
        .map(|c| format!("{} {:.1}", receiver_name(c.receiver), c.glass_ms.p50))
        .collect::<Vec<_>>()
        .join(" / ");
    let p99s = cells
        .iter()
        .map(|c| format!("{:.1}", c.glass_ms.p99))
        .collect::<Vec<_>>()
        .join(" / ");
    Some((
        format!("{p50s} ms (p99 {p99s} ms)"),
        cells.iter().all(|c| c.glass_ms.p50 <= limit_ms),
    ))
}

fn row(s: &mut String, stage: &str, values: &[Option<f64>]) {
    let _ = writeln!(
        s,
        "| {stage} | {} |",
        values
            .iter()
            .map(|v| fmt_opt(*v))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

fn summary_cell(x: &Summary) -> String {
    format!("{:.1} / {:.1} / {:.1} / {:.1}", x.p50, x.p90, x.p99, x.max)
}

/// `## Glass-to-glass and time to first frame` up to (not including) the network-profile part.
pub fn markdown(g: &GlassResults) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Glass-to-glass and time to first frame\n");
    let _ = writeln!(
        s,
        "An in-process node (x11 runtime) whose instance app draws the realtime clock as a \
         64-block barcode (32 bits of 100 µs ticks + their complement) on the X root window \
         every {:.0} ms streams it over its real signaling and WebRTC path on loopback to three \
         receivers, each its own process (`cloudphone-bench glass-viewer --receiver …`, one \
         cell at a time) on the same host and realtime clock. Frames whose clock fails the \
         complement check are counted as unreadable. Network type WIFI, SetVideoConfig \
         defaults.\n",
        g.draw_period_ms
    );
    let _ = writeln!(
        s,
        "- **webrtc-rs**: a webrtc-rs 0.17 peer hands RTP to `appsrc ! rtph26xdepay ! h26xparse \
         ! avdec_h26x max-threads=1 ! videoconvert ! GRAY8 appsink`, no jitter buffer. Glass = \
         frame at the appsink − drawn time; receiver's share = the frame's first packet into \
         appsrc → decoded.\n\
         - **webrtcbin**: GStreamer `webrtcbin` (libnice ICE, DTLS-SRTP, `rtpbin` and its \
         `rtpjitterbuffer`) with `latency={} ms` instead of the 200 ms default, the same decode \
         tail. `rtpjitterbuffer` pushes in-order packets at once and `latency` only bounds the \
         wait for a missing one, so on this clean path the setting does not show in the \
         figures. Glass as above; receiver's share = the frame's first packet into the jitter \
         buffer (after SRTP) → decoded.\n\
         - **Chromium**: headless Chromium (Debian's, software decode, `--disable-gpu`; \
         playwright-core driving `tests/browser/glass.html`) plays the stream in a `<video>` \
         with `jitterBufferTarget = 0`; on every `requestVideoFrameCallback` the page snapshots \
         the frame (`new VideoFrame(video)`) and reads the clock from the luma of its top-left \
         corner at intrinsic size, as the GStreamer receivers read their GRAY8 frames (a canvas \
         `drawImage` + `getImageData` reader, `reader=canvas`, sees the same pictures). \
         Glass = `performance.timeOrigin + expectedDisplayTime` − drawn time; receiver's share \
         = `expectedDisplayTime − receiveTime` (the frame's *last* packet in → expected on \
         screen). Chromium has no H.265 decoder here, so H.265 is measured with the two \
         GStreamer-decoding receivers only.\n",
        g.webrtcbin_latency_ms
    );
    let _ = writeln!(
        s,
        "| cell | receiver | kbps | glass p50 / p90 / p99 / max ms | receiver's share p50 / p99 ms | first frame ms | frames | unreadable | not shown | CPU % node / receiver |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let mut cells: Vec<&GlassCell> = g.cells.iter().collect();
    cells.sort_by_key(|c| (c.codec.as_str(), c.definition, c.receiver));
    for c in &cells {
        let _ = writeln!(
            s,
            "| {} ({}) | {} | {} | {} | {:.1} / {:.1} | {:.0} | {} | {} | {} | {:.0} / {:.0} |",
            c.label,
            c.network,
            receiver_name(c.receiver),
            c.bitrate_kbps,
            summary_cell(&c.glass_ms),
            c.receiver_ms.p50,
            c.receiver_ms.p99,
            c.first_frame_ms,
            c.frames,
            c.unreadable,
            if c.receiver == Receiver::Chromium {
                c.skipped.to_string()
            } else {
                "–".into()
            },
            c.cpu_percent,
            c.receiver_cpu_percent
        );
    }
    let _ = writeln!(
        s,
        "\n*first frame*: hello sent → first decoded frame (Chromium: first frame callback) of \
         that cell, encoder start included, one sample. *not shown*: frames Chromium decoded but \
         never presented. CPU: the node's process (capture, encode, SRTP; Xvfb and the clock \
         are not counted) and the receiver's whole process tree (Chromium: browser, renderer \
         and utility processes plus the node.js driver), % of one core, over the window.\n"
    );
    for (cell, why) in &g.not_run {
        let _ = writeln!(s, "- {cell}: not run: {why}");
    }
    for (cell, why) in &g.failures {
        let _ = writeln!(s, "- {cell}: FAILED: {why}");
    }
    if !g.not_run.is_empty() || !g.failures.is_empty() {
        s.push('\n');
    }

    let chromium: Vec<&&GlassCell> = cells
        .iter()
        .filter(|c| c.receiver == Receiver::Chromium)
        .collect();
    if !chromium.is_empty() {
        let _ = writeln!(
            s,
            "Inside Chromium, from the frame callback's metadata (p50 per frame) and libwebrtc's \
             `inbound-rtp` counters (averages over the window):\n"
        );
        let _ = writeln!(
            s,
            "| cell | drawn → last packet in | jitter buffer avg (target) | decode avg | receive → decoded avg | receive → presented | presented → expected display | drawn → page reads pixels |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for c in &chromium {
            let _ = writeln!(
                s,
                "| {} | {} | {} ({}) | {} | {} | {} | {} | {} |",
                c.label,
                fmt_opt(extra(c, "received")),
                fmt_opt(extra(c, "avg_jitter_buffer")),
                fmt_opt(extra(c, "avg_jitter_buffer_target")),
                fmt_opt(extra(c, "avg_decode")),
                fmt_opt(extra(c, "avg_processing")),
                fmt_opt(extra(c, "receive_to_presented")),
                fmt_opt(extra(c, "presented_to_display")),
                fmt_opt(extra(c, "callback")),
            );
        }
        let unreadable: u64 = chromium.iter().map(|c| c.unreadable).sum();
        let flat: f64 = chromium
            .iter()
            .filter_map(|c| extra(c, "count_unreadable_flat_grey"))
            .sum();
        if unreadable > 0 {
            let _ = writeln!(
                s,
                "\nChromium's unreadable frames: {unreadable} over its cells, {flat:.0} of them one \
                 flat mid-grey picture. (Found with this bench and fixed: Chromium's REMB tracks \
                 the incoming rate of a still screen, ~75 kbit/s; the bitrate controller capped \
                 at it and walked the target down to its 150 kbit/s floor, so the 10 s periodic \
                 key frame came out flat grey and a still screen never recovered, 210 of 480 \
                 frames in a 16 s run. A REMB now caps only when below 90 % of the rate actually \
                 sent, `cloudphone_core::adaptation`; the same run then read 479 of 479.)"
            );
        }
        if let Some(note) = chromium
            .iter()
            .flat_map(|c| c.notes.iter())
            .find(|n| n.starts_with("Date.now()"))
        {
            let _ = writeln!(
                s,
                "\nChromium's clock against the host's (one cell): {note}. User agent: {}.",
                chromium
                    .iter()
                    .flat_map(|c| c.notes.iter())
                    .find(|n| n.starts_with("Mozilla"))
                    .map_or("unknown", |n| n.as_str())
            );
        }
        s.push('\n');
    }

    // Where the time goes, per receiver, for the 720P30 H.264 cell.
    let by_receiver: Vec<&GlassCell> = Receiver::ALL
        .iter()
        .filter_map(|r| {
            g.cells
                .iter()
                .find(|c| c.label == CELL_720 && c.network == "loopback" && c.receiver == *r)
        })
        .collect();
    if !by_receiver.is_empty() {
        let sender = &g.sender_720p_h264;
        let stale = g.draw_period_ms / 2.0;
        let _ = writeln!(
            s,
            "Where the time goes, H.264 720P30 (p50s unless marked; the sender's stages from the \
             node's pipeline on the same display, run alone afterwards):\n"
        );
        let _ = writeln!(
            s,
            "| stage | {} |\n|---|{}",
            by_receiver
                .iter()
                .map(|c| receiver_name(c.receiver))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(by_receiver.len())
        );
        let all = |f: &dyn Fn(&GlassCell) -> Option<f64>| -> Vec<Option<f64>> {
            by_receiver.iter().map(|c| f(c)).collect()
        };
        row(
            &mut s,
            "clock on screen before capture (mean half the draw period)",
            &all(&|_| Some(stale)),
        );
        row(
            &mut s,
            &format!(
                "sender: capture caps → last RTP packet (of which encoder {:.1})",
                sender.encode_ms.p50
            ),
            &all(&|_| Some(sender.capture_to_rtp_ms.p50)),
        );
        row(
            &mut s,
            "transport: node fan-out, SRTP, UDP loopback, the receiver's network stack, X capture itself (remainder)",
            &all(&|c| {
                Some(c.glass_ms.p50 - stale - sender.capture_to_rtp_ms.p50 - c.receiver_ms.p50)
            }),
        );
        row(
            &mut s,
            "receiver's share (see above for where each starts)",
            &all(&|c| Some(c.receiver_ms.p50)),
        );
        if by_receiver.iter().any(|c| c.receiver == Receiver::Chromium) {
            let chromium_only = |f: &dyn Fn(&GlassCell) -> Option<f64>| {
                all(&|c| {
                    if c.receiver == Receiver::Chromium {
                        f(c)
                    } else {
                        None
                    }
                })
            };
            row(
                &mut s,
                "  of which receive → decoded: jitter buffer + decode (avg)",
                &chromium_only(&|c| extra(c, "avg_processing")),
            );
            row(
                &mut s,
                "  of which decoded → presented: libwebrtc's render time + the compositor's next frame (rest)",
                &chromium_only(&|c| {
                    Some(extra(c, "receive_to_presented")? - extra(c, "avg_processing")?)
                }),
            );
            row(
                &mut s,
                "  of which presented → expected display",
                &chromium_only(&|c| extra(c, "presented_to_display")),
            );
        }
        let _ = writeln!(
            s,
            "| **glass-to-glass** | {} |",
            by_receiver
                .iter()
                .map(|c| format!("**{:.1}**", c.glass_ms.p50))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        s.push('\n');
        let gst = by_receiver
            .iter()
            .filter(|c| c.receiver != Receiver::Chromium)
            .map(|c| c.glass_ms.p50)
            .fold(f64::NAN, f64::min);
        if let Some(c) = by_receiver
            .iter()
            .find(|c| c.receiver == Receiver::Chromium)
        {
            let _ = writeln!(
                s,
                "The two GStreamer-decoding receivers differ only in their network stack; \
                 Chromium's glass is {} ms above the faster of them at p50, and the difference \
                 is on the receiving side: its frames arrive as early (drawn → last packet in \
                 {} ms) but reach the screen later. libwebrtc holds each frame for a playout \
                 time = its jitter estimate + expected decode time + a fixed render delay \
                 (libwebrtc's default 10 ms), shown as the jitter-buffer target ({} ms avg) — \
                 `jitterBufferTarget = 0` only lowers what the page asks for, not that floor. \
                 Decoding itself is short ({} ms avg). The decoded frame is then shown at the \
                 compositor's next frame (60 Hz here: up to 16.7 ms, 8.3 on average), and \
                 `requestVideoFrameCallback` reports it there. Headless Chromium has no display: \
                 its `expectedDisplayTime` is {} ms from `presentationTime`, so a real screen \
                 adds its own refresh wait and panel latency on top. Not tried here: the sender \
                 could send the playout-delay RTP header extension (min = max = 0), which tells \
                 libwebrtc to render each frame as soon as it is decoded — the change that \
                 brought selkies from ~100 ms down (selkies-project/selkies #7).\n",
                fmt_opt(Some(c.glass_ms.p50 - gst).filter(|v| v.is_finite())),
                fmt_opt(extra(c, "received")),
                fmt_opt(extra(c, "avg_jitter_buffer_target")),
                fmt_opt(extra(c, "avg_decode")),
                fmt_opt(extra(c, "presented_to_display")),
            );
        }
    }
    let _ = writeln!(
        s,
        "Time to first frame (webrtc-rs viewer in the bench's process): hello sent → first \
         decoded frame, {} trials, each a new viewer and a fresh encoder: p50 {:.0} ms, p90 {:.0} \
         ms, p99 {:.0} ms, max {:.0} ms. Samples: {}.\n",
        g.ttff_ms.n,
        g.ttff_ms.p50,
        g.ttff_ms.p90,
        g.ttff_ms.p99,
        g.ttff_ms.max,
        g.ttff_samples
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}

/// The CDF plot's series: one per cell and receiver.
pub fn cdf_series(g: &GlassResults) -> Vec<(String, Vec<f64>)> {
    let mut cells: Vec<&GlassCell> = g.cells.iter().collect();
    cells.sort_by_key(|c| (c.codec.as_str(), c.definition, c.receiver));
    cells
        .iter()
        .map(|c| {
            (
                format!("{} {}", c.label, receiver_name(c.receiver)),
                c.samples.clone(),
            )
        })
        .collect()
}
