//! The live edge's baseline: nginx-rtmp (Debian's `libnginx-mod-rtmp`) started from a temporary
//! directory, measured by [`cloudphone_bench::live`]: RTMP push with the clock burned in →
//! RTMP and HLS players (glass-to-glass), then byte-reading RTMP players stepped up against its
//! CPU. Writes `target/bench-parts/live.json`. Our node is measured with
//! `cloudphone-bench live --part live-edge …` (benches/README.md).

use cloudphone_bench::{live, live_nginx, parts};

fn main() -> anyhow::Result<()> {
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
    let args = live::LiveArgs::parse_from(argv)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut results = rt.block_on(live::run(&args))?;
    results
        .not_run
        .retain(|(o, _)| o != live::Output::Flv.as_str());
    results.not_run.push((
        live::Output::Flv.as_str().to_owned(),
        "nginx-rtmp has no HTTP-FLV output (nginx-http-flv-module is not in Debian): compare FLV against its RTMP".into(),
    ));
    results
        .not_run
        .retain(|(o, _)| o != live::Output::Whep.as_str());
    results.not_run.push((
        live::Output::Whep.as_str().to_owned(),
        "nginx-rtmp has no WebRTC output".into(),
    ));
    drop(nginx);
    let path = parts::write_part(&parts::parts_dir(), "live", &results)?;
    println!("wrote {}", path.display());
    Ok(())
}
