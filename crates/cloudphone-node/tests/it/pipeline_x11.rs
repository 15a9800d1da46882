//! Capturing a real X display: the test starts its own `Xvfb` (killed by pid when the guard
//! drops), captures it with `ximagesrc` through the pipeline, and decodes what comes out.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudphone_core::video::Codec;
use cloudphone_node::runtime::CaptureSource;
use cloudphone_node::streaming::pipeline::EncodePipeline;

use crate::support::pipeline::*;

/// An `Xvfb` this test started; killed and reaped on drop.
struct Xvfb {
    child: Child,
    display: u32,
}

impl Xvfb {
    /// Starts `Xvfb :N` on the first free display from 300 on (its socket and lock absent),
    /// and waits for its socket.
    fn start(width: u32, height: u32) -> Xvfb {
        let base = 300 + std::process::id() % 400;
        for display in base..base + 50 {
            let socket = format!("/tmp/.X11-unix/X{display}");
            if Path::new(&socket).exists() || Path::new(&format!("/tmp/.X{display}-lock")).exists()
            {
                continue;
            }
            let child = Command::new("Xvfb")
                .arg(format!(":{display}"))
                .args([
                    "-screen",
                    "0",
                    &format!("{width}x{height}x24"),
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn Xvfb");
            let mut xvfb = Xvfb { child, display };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if Path::new(&socket).exists() {
                    return xvfb;
                }
                if let Ok(Some(_)) = xvfb.child.try_wait() {
                    break; // lost a race for this display; try the next
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(xvfb);
        }
        panic!("no free X display from {base}");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove its socket and lock file; SIGKILL only if it hangs.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x11_display_is_captured_encoded_and_decodes() {
    let xvfb = Xvfb::start(720, 1280);
    let source = CaptureSource::X11 {
        display: format!(":{}", xvfb.display),
        width: 720,
        height: 1280,
    };
    let started = Instant::now();
    // Scaled to 540P on the way, as the 540P definition of a 720P phone would be.
    let (pipe, mut rx) =
        EncodePipeline::start(&source, &settings(Codec::H264, 540, 960, 30, 1500)).expect("start");
    let packets = first_packets(&mut rx, "x11", started).await;
    let frames = check_rtp(&packets);
    assert!(
        frames >= 20,
        "only {frames} frames from the display in 1.5 s"
    );
    let decoded = decode(Codec::H264, &packets);
    assert!(decoded.len() >= 20, "decoded {} frames", decoded.len());
    assert!(decoded.iter().all(|s| *s == (540, 960)), "{decoded:?}");
    let stats = pipe.stats();
    assert_eq!(stats.error, None);
    let lat = &stats.pipeline_latency_ms_recent;
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    eprintln!("x11 720x1280 → 540x960: capture→RTP {mean:.1} ms/frame");

    // The pipeline goes before the display: Xlib ends the whole process when its server
    // disappears under a live connection (see docs/streaming.md), so the order matters.
    drop(pipe);
    drop(xvfb);
}
