//! Every bench in its seconds-long smoke mode, then the report from their parts, so that
//! `cargo xtask test` keeps the benches from rotting. Figures are not checked: only that each
//! bench measures something and the report is written.

use std::path::Path;

use cloudphone_bench::glass_viewer::Receiver;
use cloudphone_bench::{api, density, encode, fleet, glass, parts, report};

#[test]
fn encode_smoke_measures_both_pipelines() {
    let r = encode::run(true);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let c = &r.cells[0];
    assert!(
        c.pipeline.encode_ms.n > 0 && c.bare.encode_ms.n > 0,
        "{c:?}"
    );
    assert!(c.ratio_p50.is_finite());
}

#[test]
fn density_smoke_runs_two_levels() {
    let r = density::run(true).unwrap();
    assert_eq!(r.levels.len(), 2);
    assert!(r.bound > 0.0);
}

/// H.264 720P30 into each receiver (webrtc-rs, webrtcbin, headless Chromium) for 1 s, so
/// that none of them rots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glass_smoke_reads_the_clock_in_every_receiver_and_times_the_first_frame() {
    let r = glass::run(true, Path::new(env!("CARGO_BIN_EXE_cloudphone-bench")))
        .await
        .unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    for receiver in Receiver::ALL {
        let cell = r.cells.iter().find(|c| c.receiver == receiver);
        assert!(
            cell.is_some_and(|c| c.glass_ms.n > 0 && c.receiver_ms.n > 0),
            "{receiver:?}: {cell:?}"
        );
    }
    assert_eq!(r.ttff_ms.n, 2);
    // Through the impaired link (WIFI and MOBILE_NETWORK) when root, as CI is.
    assert!(
        r.netem_cells.len() == 2 || r.netem.starts_with("not run"),
        "{}",
        r.netem
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_smoke_launches_one_instance_and_the_report_is_written() {
    let deployment = cloudphone_testkit::fleet::Fleet::up("x11").await;
    let r = fleet::run(fleet::FleetArgs {
        api: deployment.api.clone(),
        domain: "acme".into(),
        user: "dev".into(),
        password: "correct-horse-1".into(),
        project: "cn-north-7".into(),
        count: 1,
        rate: 2.0,
        sku: "kp.x11.720p".into(),
        region: "cn-north-7".into(),
        timeout_secs: 60,
        cleanup: true,
        stream_secs: 1,
    })
    .await
    .unwrap();
    assert_eq!((r.ready, r.failures.len()), (1, 0), "{:?}", r.failures);
    assert_eq!(r.streamed_fps.len(), 1);
    assert!(r.streamed_fps[0] > 0.0, "{:?}", r.streamed_fps);
    drop(deployment);

    let dir = tempfile::tempdir().unwrap();
    parts::write_part(dir.path(), "fleet", &r).unwrap();
    report::write(dir.path(), dir.path()).unwrap();
    let md = std::fs::read_to_string(dir.path().join("REPORT.md")).unwrap();
    assert!(md.contains("launch-to-ready"), "{md}");
    assert!(dir.path().join("latest.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_smoke_serves_both_endpoints_on_sqlite_without_errors() {
    let sqlite = api::Deployment {
        backend: api::Backend::Sqlite,
        replicas: 1,
    };
    let r = api::run(true, &[sqlite]).await.unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let endpoints: Vec<&str> = r.cells.iter().map(|c| c.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["ListInstances", "GetDeviceToken"]);
    for c in &r.cells {
        assert!(c.wrk.requests > 0, "{c:?}");
        assert_eq!((c.wrk.non_2xx, c.wrk.api_errors), (0, 0), "{c:?}");
        assert!(c.wrk.latency_ms.p99 > 0.0, "{c:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    parts::write_part(dir.path(), "api", &r).unwrap();
    report::write(dir.path(), dir.path()).unwrap();
    let md = std::fs::read_to_string(dir.path().join("REPORT.md")).unwrap();
    assert!(md.contains("## API under load"), "{md}");
    assert!(md.contains("| SQLite | GetDeviceToken |"), "{md}");
}

/// The live bench's smoke run against nginx-rtmp (installed by `cargo xtask install-deps
/// --test`): both of its outputs read the clock, the players step up, and the report puts it
/// next to the placeholder for our node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_smoke_against_nginx_rtmp_reads_the_clock_and_counts_players() {
    use cloudphone_bench::{live, live_nginx};
    let nginx = live_nginx::Nginx::start().unwrap();
    let args = live::LiveArgs::parse_from([
        "--smoke",
        "--push",
        &nginx.push_url(),
        "--rtmp",
        &nginx.push_url(),
        "--hls",
        &nginx.hls_url(),
        "--server-pid",
        &nginx.pid().to_string(),
        "--server-name",
        "nginx-rtmp",
    ])
    .unwrap();
    let outputs = [live::Output::Rtmp, live::Output::Hls];
    let r = crate::run_live(&args, nginx, &outputs).await;
    for output in outputs {
        let cell = r.latency.iter().find(|c| c.output == output);
        assert!(
            cell.is_some_and(|c| c.glass_p50_ms > 0.0),
            "{output:?}: {cell:?}"
        );
    }
    let load = &r.load[0];
    assert_eq!(load.output, live::Output::Rtmp);
    assert_eq!(load.levels[0].connected, 5, "{:?}", load.levels[0]);
    assert!(load.levels[0].server_cpu_percent.is_finite());
    assert!(
        load.levels[0].kbps_per_player > 100.0,
        "{:?}",
        load.levels[0]
    );

    let dir = tempfile::tempdir().unwrap();
    parts::write_part(dir.path(), "live", &r).unwrap();
    report::write(dir.path(), dir.path()).unwrap();
    let md = std::fs::read_to_string(dir.path().join("REPORT.md")).unwrap();
    assert!(md.contains("## Live edge vs nginx-rtmp"), "{md}");
    assert!(
        md.contains("| cloudphone node | RTMP / HTTP-FLV / HLS / WHEP | not measured yet"),
        "{md}"
    );
}
