//! The live edge against its baseline, in one run on one machine: nginx-rtmp (Debian's
//! `libnginx-mod-rtmp`) started from a temporary directory, then our node (a real
//! `cloudphone-node` with `[live] rtmp_listen`, enrolled with a throwaway control, its stream
//! admitted through `PutLiveStream`, [`cloudphone_bench::live_node`]), each measured by
//! [`cloudphone_bench::live`]: RTMP push with the clock burned in → one decoding player per
//! output (glass-to-glass), then byte-reading players stepped up against the server's CPU.
//! Writes `target/bench-parts/live.json` (nginx-rtmp) and `live-edge.json` (ours), and the
//! report's live section alone as `live.md` next to them.
//! `CLOUDPHONE_BENCH_LIVE_SERVERS=node` (or `nginx`) runs one of the two. The node is a release
//! build unless `CLOUDPHONE_BENCH_LIVE_NODE=debug` (see [`live_node::node_profile`]).
//! `CLOUDPHONE_BENCH_LIVE_ARGS` adds `cloudphone-bench live` arguments to both runs, e.g.
//! `--skip-secs 0 --seconds 1 --players 1600` for a minutes-long load-only experiment (its
//! parts go to `CLOUDPHONE_BENCH_PARTS` so they do not replace the real run's).

use cloudphone_bench::{live, live_nginx, live_node, parts};

fn servers() -> Vec<String> {
    std::env::var("CLOUDPHONE_BENCH_LIVE_SERVERS")
        .unwrap_or_else(|_| "nginx,node".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect()
}

/// `CLOUDPHONE_BENCH_LIVE_ARGS`, split on whitespace.
fn extra_args() -> Vec<String> {
    std::env::var("CLOUDPHONE_BENCH_LIVE_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn nginx(rt: &tokio::runtime::Runtime) -> anyhow::Result<live::LiveResults> {
    let nginx = live_nginx::Nginx::start()?;
    let push = nginx.push_url();
    let mut argv = vec![
        "--push".to_owned(),
        push.clone(),
        "--rtmp".into(),
        push,
        "--hls".into(),
        nginx.hls_url(),
        "--server-pid".into(),
        nginx.pid().to_string(),
        "--server-name".into(),
        live_nginx::Nginx::version(),
    ];
    if parts::smoke_requested() {
        argv.push("--smoke".into());
    }
    argv.extend(extra_args());
    let args = live::LiveArgs::parse_from(argv)?;
    let mut results = rt.block_on(live::run(&args))?;
    // The outputs nginx-rtmp lacks: not run, whatever the run said, and why.
    for (output, why) in [
        (
            live::Output::Flv,
            "nginx-rtmp has no HTTP-FLV output (nginx-http-flv-module is not in Debian): compare FLV against its RTMP",
        ),
        (live::Output::Whep, "nginx-rtmp has no WebRTC output"),
    ] {
        results.not_run.retain(|(o, _)| o != output.as_str());
        results
            .not_run
            .push((output.as_str().to_owned(), why.to_owned()));
    }
    drop(nginx);
    Ok(results)
}

fn node(rt: &tokio::runtime::Runtime) -> anyhow::Result<live::LiveResults> {
    let profile = live_node::node_profile(parts::smoke_requested());
    let node = rt.block_on(live_node::LiveNode::start_as(profile))?;
    let mut argv = node.url_args();
    argv.extend([
        "--server-pid".into(),
        node.pid().to_string(),
        "--server-name".into(),
        format!("cloudphone node ({} build)", node.profile),
    ]);
    if parts::smoke_requested() {
        argv.push("--smoke".into());
    }
    argv.extend(extra_args());
    let args = live::LiveArgs::parse_from(argv)?;
    let results = rt.block_on(live::run(&args));
    if results.is_err() {
        eprintln!("node log: {}", node.log_path().display());
    }
    drop(node);
    results
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let dir = parts::parts_dir();
    let servers = servers();
    if servers.iter().any(|s| s == "nginx") {
        let results = nginx(&rt)?;
        let path = parts::write_part(&dir, "live", &results)?;
        println!("wrote {}", path.display());
    }
    if servers.iter().any(|s| s == "node") {
        let results = node(&rt)?;
        let path = parts::write_part(&dir, "live-edge", &results)?;
        println!("wrote {}", path.display());
    }
    let nginx: Option<live::LiveResults> = parts::read_part(&dir, "live")?;
    let edge: Option<live::LiveResults> = parts::read_part(&dir, "live-edge")?;
    let md = cloudphone_bench::live_report::markdown(nginx.as_ref(), edge.as_ref());
    let path = dir.join("live.md");
    std::fs::write(&path, md)?;
    println!("wrote {}", path.display());
    Ok(())
}
