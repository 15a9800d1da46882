//! The userspace impaired link (`cloudphone_bench::impair`) measured end to end: UDP from the
//! root namespace to sockets in the link's viewer namespace. Needs root (TUN devices and
//! namespaces), as CI has; without it the tests say so and pass.
//!
//! `cargo test -p cloudphone-bench --test it impair:: -- --nocapture` prints the figures.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cloudphone_bench::impair::{ImpairedLink, NetnsThread, Profile};

/// A link with `profile`; `None` (and said so) when not root.
fn link_up(profile: Profile) -> Option<ImpairedLink> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the impaired link needs TUN devices and namespaces; skipped");
        return None;
    }
    Some(ImpairedLink::up(profile).unwrap())
}

/// What a socket in the viewer namespace received: (arrival, datagram size).
type Arrivals = Vec<(Instant, usize)>;

/// A UDP socket in the viewer namespace on `port` that echoes (or only records) what arrives,
/// until `stop`.
fn viewer_socket(
    link: &ImpairedLink,
    echo: bool,
    stop: Arc<AtomicBool>,
) -> (SocketAddr, NetnsThread<Arrivals>) {
    let (tx, rx) = mpsc::channel();
    let addr = link.viewer_addr();
    let thread = link
        .spawn(move || {
            let s = UdpSocket::bind((addr, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            tx.send(s.local_addr().unwrap()).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                seen.push((Instant::now(), n));
                if echo {
                    s.send_to(&buf[..n], from).unwrap();
                }
            }
            seen
        })
        .unwrap();
    (rx.recv().unwrap(), thread)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `count` pings, one every `interval`, to an echo in the viewer namespace: sorted RTTs (ms)
/// of those that came back.
fn ping(link: &ImpairedLink, count: u32, interval: Duration) -> Vec<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let (echo, echo_thread) = viewer_socket(link, true, Arc::clone(&stop));
    let s = UdpSocket::bind((link.node_addr(), 0)).unwrap();
    let t0 = Instant::now();
    let reader = {
        let s = s.try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut rtts = Vec::new();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = s.recv(&mut buf) {
                    assert_eq!(n, 16);
                    let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                    let now = t0.elapsed().as_nanos() as u64;
                    rtts.push((now - sent) as f64 / 1e6);
                }
            }
            rtts
        })
    };
    for seq in 0..count {
        let mut msg = [0u8; 16];
        msg[..8].copy_from_slice(&u64::from(seq).to_be_bytes());
        msg[8..].copy_from_slice(&(t0.elapsed().as_nanos() as u64).to_be_bytes());
        s.send_to(&msg, echo).unwrap();
        std::thread::sleep(interval);
    }
    // The last replies: one RTT, plus margin.
    std::thread::sleep(link.profile().rtt() * 2 + Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let mut rtts = reader.join().unwrap();
    echo_thread.join().unwrap();
    rtts.sort_by(f64::total_cmp);
    rtts
}

/// Sends `count` datagrams of `size` bytes of payload at `bps` (IP bytes) into the viewer
/// namespace; what arrived there.
fn blast(link: &ImpairedLink, count: usize, size: usize, bps: f64) -> Arrivals {
    let stop = Arc::new(AtomicBool::new(false));
    let (sink, sink_thread) = viewer_socket(link, false, Arc::clone(&stop));
    let s = UdpSocket::bind((link.node_addr(), 0)).unwrap();
    let payload = vec![0x5au8; size];
    let per_packet = Duration::from_secs_f64((size + 28) as f64 * 8.0 / bps);
    let t0 = Instant::now();
    for i in 0..count {
        // Paced in 4 ms batches, so the sender is not the bottleneck nor a CPU hog.
        let due = t0 + per_packet * i as u32;
        let now = Instant::now();
        if due > now + Duration::from_millis(4) {
            std::thread::sleep(due - now);
        }
        // The TUN device's own queue may refuse a packet under a burst; that is a drop too.
        let _ = s.send_to(&payload, sink);
    }
    let p = link.profile();
    std::thread::sleep(p.rtt() + p.queue + Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    sink_thread.join().unwrap()
}

#[test]
fn wifi_link_has_20ms_rtt_and_no_loss() {
    let Some(link) = link_up(Profile::wifi()) else {
        return;
    };
    eprintln!(
        "link {} node {} viewer {}",
        link.netns(),
        link.node_addr(),
        link.viewer_addr()
    );
    let rtts = ping(&link, 50, Duration::from_millis(10));
    let (min, p50, p95, max) = (
        rtts[0],
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.95),
        rtts[rtts.len() - 1],
    );
    eprintln!(
        "WIFI: {} of 50 pings back, RTT min {min:.2} p50 {p50:.2} p95 {p95:.2} max {max:.2} ms",
        rtts.len()
    );
    assert_eq!(rtts.len(), 50, "no loss on WIFI");
    assert!(min >= 20.0, "RTT below the profile's 20 ms: {min}");
    assert!(p50 <= 23.0, "median RTT {p50} ms, want 20–23");
    assert!(p95 <= 27.0, "p95 RTT {p95} ms");

    // Dropped, the link leaves nothing behind.
    let ns = link.netns().to_owned();
    drop(link);
    assert!(!std::path::Path::new("/run/netns").join(&ns).exists());
    assert!(!std::path::Path::new(&format!("/sys/class/net/{ns}h")).exists());
}

#[test]
fn mobile_network_link_has_60ms_rtt_1pct_loss_and_8mbit_cap() {
    let Some(link) = link_up(Profile::mobile_network()) else {
        return;
    };

    let rtts = ping(&link, 50, Duration::from_millis(10));
    let p50 = percentile(&rtts, 0.5);
    eprintln!(
        "MOBILE_NETWORK: {} of 50 pings back, RTT min {:.2} p50 {p50:.2} max {:.2} ms",
        rtts.len(),
        rtts[0],
        rtts[rtts.len() - 1]
    );
    assert!(
        rtts[0] >= 60.0 && p50 <= 63.0,
        "RTT p50 {p50} ms, want 60–63"
    );
    assert!(rtts.len() >= 45, "{} of 50 pings back", rtts.len());

    // One-way loss: 3000 small datagrams at 2 Mbit/s (well under the cap, so no queue drops).
    let before = link.stats().to_viewer;
    let got = blast(&link, 3000, 72, 2e6);
    let stats = link.stats().to_viewer;
    let loss = 1.0 - got.len() as f64 / 3000.0;
    eprintln!(
        "MOBILE_NETWORK: {} of 3000 arrived, loss {:.2} % (link: {} lost, {} overflowed)",
        got.len(),
        loss * 100.0,
        stats.lost - before.lost,
        stats.overflowed - before.overflowed
    );
    assert_eq!(
        stats.overflowed, before.overflowed,
        "no queue drops at 2 Mbit/s"
    );
    // Binomial(3000, 1 %): σ ≈ 0.18 %.
    assert!((0.004..=0.016).contains(&loss), "loss {loss}");

    // Rate: 1200-byte datagrams offered at 12 Mbit/s for 2 s.
    let before = link.stats().to_viewer;
    let got = blast(&link, 2500, 1200, 12e6);
    let stats = link.stats().to_viewer;
    let (first, last) = (got[0].0, got[got.len() - 1].0);
    let ip_bytes: usize = got[1..].iter().map(|(_, n)| n + 28).sum();
    let mbps = ip_bytes as f64 * 8.0 / (last - first).as_secs_f64() / 1e6;
    eprintln!(
        "MOBILE_NETWORK: 12 Mbit/s offered, {mbps:.2} Mbit/s received (IP layer) over {:.2} s; \
         link: {} overflowed, {} lost",
        (last - first).as_secs_f64(),
        stats.overflowed - before.overflowed,
        stats.lost - before.lost
    );
    assert!(
        stats.overflowed > before.overflowed,
        "the queue must have overflowed"
    );
    // 8 Mbit/s less the 1 % lost after the bottleneck.
    assert!((7.4..=8.3).contains(&mbps), "{mbps} Mbit/s");
}

#[test]
fn profile_can_change_on_a_live_link() {
    let Some(link) = link_up(Profile::none()) else {
        return;
    };
    let fast = ping(&link, 10, Duration::from_millis(5));
    link.set_profile(Profile::none().with_delay(Duration::from_millis(15)));
    let slow = ping(&link, 10, Duration::from_millis(5));
    eprintln!(
        "no impairment: RTT p50 {:.2} ms; 30 ms RTT set live: p50 {:.2} ms",
        percentile(&fast, 0.5),
        percentile(&slow, 0.5)
    );
    assert!(percentile(&fast, 0.5) < 5.0);
    assert!((30.0..34.0).contains(&percentile(&slow, 0.5)));
}
