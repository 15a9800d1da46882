//! Glass-to-glass under a network profile per `network_type`, through the userspace impaired
//! link of [`crate::impair`] (this machine's kernel has no `sch_netem`).
//!
//! The link's viewer namespace holds the receiver (`ip netns exec <ns> cloudphone-bench
//! glass-viewer …`); a second in-process node, started once the loopback cells are done, listens
//! for signaling on the link's root-side address. Its WebRTC host candidates are every address
//! of the root namespace (the node sets no interface or IP filter and no `public_ip` here), and
//! the viewer namespace's default route goes through the link, so signaling, ICE, DTLS, media
//! and RTCP all cross the impairment. The hello carries the profile's `network_type`, so the
//! node streams that row of its video matrix.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use cloudphone_core::video::{Codec, Definition, NetworkType};

use crate::glass::{GlassCell, GlassResults, Node, Stream, Window, file_cell};
use crate::glass_viewer::Receiver;
use crate::impair::{DirectionStats, ImpairedLink, LinkStats, Profile};

/// The network types measured, in order.
pub const NETWORKS: [NetworkType; 2] = [NetworkType::Wifi, NetworkType::MobileNetwork];

/// What [`run`] hands back to the glass results.
#[derive(Debug, Default)]
pub struct NetemRun {
    pub cells: Vec<GlassCell>,
    /// How the impairment was made, or why it was not run.
    pub note: String,
    pub failures: Vec<(String, String)>,
}

/// How the link is made, for the report.
pub fn method() -> String {
    format!(
        "userspace TUN link, because this kernel has no netem qdisc (`tc qdisc add … netem` \
         answers \"Specified qdisc kind is unknown\" and there are no modules to load): the \
         receiver runs in its own network namespace whose only way out is a TUN device; the \
         bench process forwards every packet between it and a TUN device in the node's namespace \
         through a token bucket with a tail-drop queue (like tbf), seeded random loss and a fixed \
         delay each way (order kept). Profiles: {}",
        NETWORKS
            .iter()
            .map(|n| format!("{n} {}", Profile::for_network(*n).describe()))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

fn delta(a: DirectionStats, b: DirectionStats) -> DirectionStats {
    DirectionStats {
        packets: b.packets - a.packets,
        bytes: b.bytes - a.bytes,
        delivered: b.delivered - a.delivered,
        lost: b.lost - a.lost,
        overflowed: b.overflowed - a.overflowed,
    }
}

fn describe_stats(before: LinkStats, after: LinkStats) -> String {
    let d = |name: &str, s: DirectionStats| {
        format!(
            "{name}: {} packets, {} lost, {} dropped by the rate limit",
            s.packets, s.lost, s.overflowed
        )
    };
    format!(
        "link over the whole cell (set-up included): {}; {}",
        d("to viewer", delta(before.to_viewer, after.to_viewer)),
        d("to node", delta(before.to_node, after.to_node))
    )
}

/// One profile into one receiver running in the link's namespace.
async fn cell(
    node: &mut Node,
    link: &ImpairedLink,
    bench_exe: &Path,
    n: usize,
    network: NetworkType,
    receiver: Receiver,
    window: Window,
) -> Result<GlassCell> {
    let stream = Stream {
        codec: Codec::H264,
        definition: Definition::P720,
        network,
    };
    let profile = Profile::for_network(network);
    link.set_profile(profile);
    let prefix = ["ip", "netns", "exec", link.netns()];
    let before = link.stats();
    let name = format!("netem-{n}");
    let m = node
        .view(
            &prefix,
            bench_exe,
            ("n720", &name),
            receiver,
            stream,
            window,
        )
        .await?;
    let after = link.stats();
    let mut cell = GlassCell::from_run(
        m,
        receiver,
        stream,
        format!("{network} ({})", profile.describe()),
    )?;
    cell.notes.push(describe_stats(before, after));
    Ok(cell)
}

/// H.264 720P30 under each profile of [`NETWORKS`] into each of `receivers`, through one
/// impaired link whose profile changes between cells. Never fails: a link that cannot come up
/// (not root, no /dev/net/tun) is a "not run" note, a cell that fails is a failure.
pub async fn run(smoke: bool, bench_exe: &Path, receivers: &[Receiver]) -> NetemRun {
    if !nix::unistd::geteuid().is_root() {
        return NetemRun {
            note: "not run: the impaired link needs root (TUN devices, network namespaces)".into(),
            ..NetemRun::default()
        };
    }
    let link = match ImpairedLink::up(Profile::wifi()) {
        Ok(link) => link,
        Err(e) => {
            return NetemRun {
                note: format!("not run: the impaired link did not come up: {e:#}"),
                ..NetemRun::default()
            };
        }
    };
    let mut out = NetemRun {
        note: method(),
        ..NetemRun::default()
    };
    let mut node = match Node::start_on(bench_exe, link.node_addr().into()).await {
        Ok(node) => node,
        Err(e) => {
            out.failures.push(("netem node".into(), format!("{e:#}")));
            return out;
        }
    };
    if let Err(e) = node.create_instance("n720", 720, 1280).await {
        out.failures
            .push(("netem instance".into(), format!("{e:#}")));
    } else {
        let window = if smoke {
            Window::from_ms(500, 1_500, 30_000, 120_000)
        } else {
            Window::from_ms(2_000, 10_000, 30_000, 120_000)
        };
        let receivers: Vec<Receiver> = if smoke {
            receivers.iter().copied().take(1).collect()
        } else {
            receivers.to_vec()
        };
        let mut n = 0;
        for network in NETWORKS {
            for &receiver in &receivers {
                if !receiver.decodes(Codec::H264) {
                    continue;
                }
                n += 1;
                let label = format!("H264 720P {network} × {}", receiver.as_str());
                let outcome = cell(&mut node, &link, bench_exe, n, network, receiver, window).await;
                file_cell(
                    outcome,
                    label,
                    |c| {
                        format!(
                            "glass netem {network:<14} {:<9} p50 {:>6.1} p99 {:>6.1} max {:>6.1} ms  first frame {:.0} ms, {} frames, {} unreadable",
                            receiver.as_str(),
                            c.glass_ms.p50,
                            c.glass_ms.p99,
                            c.glass_ms.max,
                            c.first_frame_ms,
                            c.frames,
                            c.unreadable
                        )
                    },
                    &mut out.cells,
                    &mut out.failures,
                )
                .await;
            }
        }
    }
    if let Err(e) = node.shutdown().await {
        out.failures
            .push(("netem node shutdown".into(), format!("{e:#}")));
    }
    drop(link);
    out
}

/// The report's section on the impaired-link cells (markdown, ends with a blank line).
pub fn markdown(g: &GlassResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**Under network profiles** (H.264 720P, the node's bitrate row for the hello's \
         network_type): {}.\n",
        g.netem
    );
    if g.netem_cells.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "Media crosses the link once, so against the same receiver on loopback glass-to-glass \
         should grow by about the one-way delay (WIFI 10 ms, MOBILE_NETWORK 30 ms) plus any \
         queueing at the rate cap; the round trip shows in the first frame (signaling, ICE, \
         DTLS) and in recovering a lost packet (NACK/PLI; the webrtc-rs viewer sends neither, \
         so a loss there stalls or corrupts until the next keyframe). Loss and queue drops are \
         counted by the link per cell, below the table.\n"
    );
    let loopback = |r: Receiver| {
        g.cells
            .iter()
            .find(|c| c.label == "H264 720P30" && c.receiver == r)
            .map(|c| c.glass_ms.p50)
    };
    let _ = writeln!(
        s,
        "| network_type (link profile) | receiver | kbps | glass p50 | p90 | p99 | max | p50 − loopback p50 | first frame ms | frames | unreadable |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in &g.netem_cells {
        let vs = loopback(c.receiver)
            .map(|l| format!("{:+.1}", c.glass_ms.p50 - l))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {vs} | {:.0} | {} | {} |",
            c.network,
            c.receiver.as_str(),
            c.bitrate_kbps,
            c.glass_ms.p50,
            c.glass_ms.p90,
            c.glass_ms.p99,
            c.glass_ms.max,
            c.first_frame_ms,
            c.frames,
            c.unreadable
        );
    }
    let _ = writeln!(s);
    for c in &g.netem_cells {
        if let Some(link) = c.notes.iter().find(|n| n.starts_with("link over")) {
            let _ = writeln!(
                s,
                "- {} × {}: {link}",
                c.network.split(' ').next().unwrap_or(""),
                c.receiver.as_str()
            );
        }
    }
    let _ = writeln!(s);
    s
}
