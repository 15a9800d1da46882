//! Turns the benches' parts into `latest.json`, `REPORT.md` and PNG plots: the machine, the
//! exact settings of every cell, the targets with the measured value next to each,
//! and a per-stage breakdown where one is missed.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::api::ApiResults;
use crate::density::DensityResults;
use crate::encode::{self, EncodeResults};
use crate::fleet::FleetResults;
use crate::glass::GlassResults;
use crate::live::LiveResults;
use crate::parts::read_part;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub gstreamer: String,
    pub build_profile: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    /// `None` when the bench did not run.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latest {
    pub(crate) generated_unix_ms: i64,
    pub(crate) machine: Machine,
    pub(crate) targets: Vec<Target>,
    pub(crate) encode: Option<EncodeResults>,
    pub(crate) glass: Option<GlassResults>,
    pub(crate) density: Option<DensityResults>,
    pub(crate) fleet: Option<FleetResults>,
    pub(crate) api: Option<ApiResults>,
    /// nginx-rtmp, from the `live` bench.
    #[serde(default)]
    pub(crate) live: Option<LiveResults>,
    /// Our node, from `cloudphone-bench live --part live-edge`.
    #[serde(default)]
    pub(crate) live_edge: Option<LiveResults>,
}

fn first_line(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with(key)).and_then(|l| {
                l.split_once([':', '='])
                    .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn machine() -> Machine {
    let _ = gstreamer::init();
    Machine {
        cpu: first_line("/proc/cpuinfo", "model name"),
        cores: crate::stats::cores(),
        memory: first_line("/proc/meminfo", "MemTotal"),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        os: first_line("/etc/os-release", "PRETTY_NAME"),
        gstreamer: gstreamer::version_string().to_string(),
        build_profile: std::env::var("CLOUDPHONE_BENCH_PROFILE").unwrap_or_else(|_| "dev".into()),
    }
}

fn target(what: &str, target: &str, measured: Option<(String, bool)>) -> Target {
    Target {
        what: what.into(),
        target: target.into(),
        measured: measured.as_ref().map_or("not run".into(), |m| m.0.clone()),
        met: measured.map(|m| m.1),
    }
}

fn targets(l: &Latest) -> Vec<Target> {
    // A live target needs both runs: nginx-rtmp's (`live`) and our edge's (`live-edge`).
    let live_vs_nginx = |target: fn(&LiveResults, &LiveResults) -> Option<(String, bool)>| {
        l.live
            .as_ref()
            .zip(l.live_edge.as_ref())
            .and_then(|(n, e)| target(n, e))
    };
    let cell720 = l
        .encode
        .as_ref()
        .and_then(|e| e.cells.iter().find(|c| c.label == "H264 720P30"));
    vec![
        target(
            "720P30 H.264 encode p50 vs bare x264enc p50",
            "≤ 1.10 ×",
            cell720.map(|c| {
                (
                    format!(
                        "{:.2} × ({:.2} ms vs {:.2} ms)",
                        c.ratio_p50, c.pipeline.encode_ms.p50, c.bare.encode_ms.p50
                    ),
                    c.ratio_p50 <= 1.10,
                )
            }),
        ),
        target(
            "720P30 H.264 encode p99 vs its p50",
            "≤ 2 ×",
            cell720.map(|c| {
                let r = c.pipeline.encode_ms.p99 / c.pipeline.encode_ms.p50;
                (
                    format!(
                        "{r:.2} × ({:.2} ms vs {:.2} ms)",
                        c.pipeline.encode_ms.p99, c.pipeline.encode_ms.p50
                    ),
                    r <= 2.0,
                )
            }),
        ),
        target(
            "glass-to-glass H.264 720P30, loopback, p50, every receiver",
            "≤ 40 ms",
            l.glass
                .as_ref()
                .and_then(|g| crate::glass_report::target_720p(g, 40.0)),
        ),
        target(
            "time to first frame (hello → decoded), p50",
            "≤ 300 ms",
            l.glass.as_ref().map(|g| {
                (
                    format!(
                        "{:.0} ms (p99 {:.0} ms, {} trials)",
                        g.ttff_ms.p50, g.ttff_ms.p99, g.ttff_ms.n
                    ),
                    g.ttff_ms.p50 <= 300.0,
                )
            }),
        ),
        target(
            "x11 instance launch-to-ready, p50",
            "≤ 1 s",
            l.fleet.as_ref().map(|f| {
                (
                    format!(
                        "{:.0} ms (max {:.0} ms, {} of {} ready)",
                        f.launch_to_ready_ms.p50, f.launch_to_ready_ms.max, f.ready, f.args.count
                    ),
                    f.launch_to_ready_ms.n > 0
                        && f.launch_to_ready_ms.p50 <= 1000.0
                        && f.failures.is_empty(),
                )
            }),
        ),
        target(
            "density, 720P30 H.264, < 1 % dropped, vs bare-encoder bound",
            "≥ 80 %",
            l.density.as_ref().map(|d| {
                let pct = 100.0 * d.sustained as f64 / d.bound;
                (
                    format!("{} sessions = {pct:.0} % of {:.1}", d.sustained, d.bound),
                    pct >= 80.0,
                )
            }),
        ),
        target(
            "live p50 after the push (glass − publisher) vs nginx-rtmp, every output (FLV vs its RTMP)",
            "lower",
            live_vs_nginx(crate::live_report::latency_target),
        ),
        target(
            "live players per core at < 1 % loss vs nginx-rtmp RTMP",
            "≥",
            live_vs_nginx(crate::live_report::load_target),
        ),
    ]
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not run",
    }
}

/// How the encode cells' streaming threads were scheduled, from what the pipelines reported.
fn scheduling(e: &EncodeResults) -> String {
    let sum = |f: fn(&encode::CellResult) -> (u64, u64)| {
        e.cells
            .iter()
            .map(f)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (p_rt, p_all) = sum(|c| (c.pipeline.realtime_threads, c.pipeline.streaming_threads));
    let (b_rt, b_all) = sum(|c| (c.bare.realtime_threads, c.bare.streaming_threads));
    format!(
        "the node's default, `SCHED_RR` priority {} on every streaming thread (capture, encode) of \
         both pipelines, so they differ only in what runs around the encoder: {p_rt} of {p_all} \
         pipeline threads and {b_rt} of {b_all} bare threads were elevated; x264 runs one thread \
         per stream (`threads=1`, no slice threads)",
        cloudphone_node::streaming::priority::DEFAULT_REALTIME_PRIORITY
    )
}

fn markdown(l: &Latest) -> String {
    let mut s = String::new();
    let m = &l.machine;
    let _ = writeln!(s, "# Benchmark report\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench` (unix ms {}). Every figure is one run on the machine \
         below; the pipeline and its baseline ran back to back in the same process, so compare \
         within this report only.\n",
        l.generated_unix_ms
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| CPU | {} |\n| cores | {} |\n| memory | {} |\n| OS | {} |\n| kernel | {} |\n| GStreamer | {} |\n| build profile | {} |\n",
        m.cpu, m.cores, m.memory, m.os, m.kernel, m.gstreamer, m.build_profile
    );
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| what | target | measured | |\n|---|---|---|---|");
    for t in &l.targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.what,
            t.target,
            t.measured,
            met(t.met)
        );
    }
    let _ = writeln!(s);

    if let Some(e) = &l.encode {
        let _ = writeln!(s, "## Encode latency per frame\n");
        let _ = writeln!(
            s,
            "Source `videotestsrc is-live=true pattern={}` at the output size and rate; {} warm-up \
             frames skipped, {} measured per cell. **Pipeline**: the node's `EncodePipeline` \
             (test-pattern source → convert/scale → I420 caps → 1-frame leaky queue → encoder → \
             parser → RTP payloader → appsink), figures from its pad probes. **Bare**: `{}`. \
             *encode* = encoder sink pad → src pad; *capture→out* = capture caps filter → the frame's last RTP packet \
             (pipeline) or → encoder output (bare). CPU is the whole process over the window, % of one core. \
             Bitrates: SetVideoConfig defaults (WIFI row). Scheduling: {}. Hardware encoders: {}.\n",
            e.pattern,
            e.frames.warmup,
            e.frames.measured,
            encode::bare_description(
                &encode::Cell::new(
                    cloudphone_core::video::Codec::H264,
                    cloudphone_core::video::Definition::P720,
                    30
                ),
                true
            ),
            scheduling(e),
            e.hardware
        );
        let _ = writeln!(
            s,
            "| cell | size | kbps | encoder | pipeline encode p50/p90/p99/max ms | bare encode p50/p90/p99/max ms | ratio p50 / p99 | pipeline capture→RTP p50/p99 ms | dropped (pipeline/bare) | CPU % (pipeline/bare) | out kbps |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for c in &e.cells {
            let (p, b) = (&c.pipeline, &c.bare);
            let _ = writeln!(
                s,
                "| {} | {}×{} | {} | {} | {:.2} / {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} / {} | {:.0} / {:.0} | {:.0} |",
                c.label,
                c.width,
                c.height,
                c.cell.bitrate_kbps,
                c.encoder,
                p.encode_ms.p50,
                p.encode_ms.p90,
                p.encode_ms.p99,
                p.encode_ms.max,
                b.encode_ms.p50,
                b.encode_ms.p90,
                b.encode_ms.p99,
                b.encode_ms.max,
                c.ratio_p50,
                c.ratio_p99,
                p.capture_to_out_ms.p50,
                p.capture_to_out_ms.p99,
                p.frames_dropped,
                b.frames_dropped,
                p.cpu_percent,
                b.cpu_percent,
                p.kbps
            );
        }
        for (cell, why) in &e.failures {
            let _ = writeln!(s, "\n- {cell}: FAILED: {why}");
        }
        let _ = writeln!(
            s,
            "\nH.265 bare encoder line: `{}`.\n",
            encode::bare_encoder_description(&encode::Cell::new(
                cloudphone_core::video::Codec::H265,
                cloudphone_core::video::Definition::P720,
                30
            ))
        );
        let _ = writeln!(
            s,
            "![encode CDF](encode_cdf.png)\n\n![encode p50 vs bitrate](encode_vs_bitrate.png)\n"
        );
    }

    if let Some(g) = &l.glass {
        s += &crate::glass_report::markdown(g);
        s += &crate::glass_netem::markdown(g);
        let _ = writeln!(s, "![glass-to-glass CDF](glass_cdf.png)\n");
    }

    if let Some(d) = &l.density {
        let _ = writeln!(s, "## Density\n");
        let _ = writeln!(
            s,
            "N concurrent node pipelines, {} ({} kbps, x264enc, `{}` test pattern), each drained \
             like a viewer would; per level 2 s warm-up, then frames encoded over the window vs \
             fps × seconds × N. Bound = {} cores × 1000 ms ÷ ({:.2} bare CPU ms/frame × {} fps) = \
             **{:.1}**, with the bare CPU ms/frame from the bare pipeline running unpaced \
             (source included). Sustained: **{}** sessions.\n",
            d.cell.label(),
            d.cell.bitrate_kbps,
            encode::PATTERN,
            d.cores,
            d.bare_cpu_ms_per_frame,
            d.cell.fps,
            d.bound,
            d.sustained
        );
        let _ = writeln!(
            s,
            "| sessions | dropped % | CPU % (of one core) |\n|---|---|---|"
        );
        for lv in &d.levels {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.0} |",
                lv.sessions,
                lv.drop_fraction * 100.0,
                lv.cpu_percent
            );
        }
        let _ = writeln!(s, "\n![density](density.png)\n");
    }

    if let Some(f) = &l.fleet {
        let _ = writeln!(s, "## Fleet launch\n");
        let _ = writeln!(
            s,
            "`cloudphone-bench fleet --api … --count {} --rate {}` against a throwaway deployment \
             (control + one x11 node, SQLite, debug binaries): IAM login, one CreateInstance \
             ({}) per instance at the rate, ListInstances polled every 100 ms until \
             running_status 2. Launch-to-ready p50 {:.0} ms, max {:.0} ms; CreateInstance answered \
             in p50 {:.0} ms; {} of {} ready; failures: {}. {}\n",
            f.args.count,
            f.args.rate,
            f.args.sku,
            f.launch_to_ready_ms.p50,
            f.launch_to_ready_ms.max,
            f.create_call_ms.p50,
            f.ready,
            f.args.count,
            if f.failures.is_empty() {
                "none".to_owned()
            } else {
                f.failures.join("; ")
            },
            if f.streamed_fps.is_empty() {
                "Streaming: not run.".to_owned()
            } else {
                format!(
                    "Then every ready instance streamed at once for {} s (GetDeviceToken → its \
                     `signaling_url`, one webrtc-rs viewer each, H.264 720P, WIFI profile, \
                     30 fps target): decoded fps mean {:.1}, min {:.1} over {} instances \
                     ({}).",
                    f.args.stream_secs,
                    f.streamed_fps_summary.mean,
                    f.streamed_fps_min,
                    f.streamed_fps.len(),
                    f.streamed_fps
                        .iter()
                        .map(|v| format!("{v:.1}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    if let Some(a) = &l.api {
        s += &crate::api::markdown(a);
    }
    s += &crate::live_report::markdown(l.live.as_ref(), l.live_edge.as_ref());
    s
}

fn load_font() -> bool {
    for path in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

type Canvas<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Every plot's canvas: 900×560, white.
fn canvas(path: &Path) -> Result<Canvas<'_>, Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// Every plot's frame: its caption at `size` pt, margin and axis label areas.
fn frame<'a, 'b>(
    root: &'a Canvas<'b>,
    caption: impl AsRef<str>,
    size: u32,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(caption, ("sans-serif", size))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55);
    builder
}

/// A legend entry: a 20 px stroke in `style`.
fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// Draws the legend at `at` and writes the file.
fn finish<'a, CT: CoordTranslate>(
    root: &Canvas<'_>,
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    at: SeriesLabelPosition,
) -> PlotResult {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect()
}

fn plot_cdfs(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> PlotResult {
    let root = canvas(path)?;
    let xmax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0_f64, f64::max)
        * 1.05;
    let mut chart = frame(&root, title, 22).build_cartesian_2d(0.0..xmax, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("fraction of frames ≤ x")
        .draw()?;
    for (i, (name, v)) in series.iter().enumerate() {
        let color = Palette99::pick(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(cdf(v), color))?
            .label(name.clone())
            .legend(legend_line(color));
    }
    finish(&root, &mut chart, SeriesLabelPosition::LowerRight)
}

fn plot_encode_vs_bitrate(path: &Path, e: &EncodeResults) -> PlotResult {
    let root = canvas(path)?;
    let xmax = e
        .cells
        .iter()
        .map(|c| c.cell.bitrate_kbps as f64)
        .fold(1.0, f64::max)
        * 1.1;
    let ymax = e
        .cells
        .iter()
        .map(|c| c.pipeline.encode_ms.p50.max(c.bare.encode_ms.p50))
        .fold(1.0, f64::max)
        * 1.2;
    let mut chart = frame(
        &root,
        "encode p50 vs bitrate (540P/720P/1080P), node pipeline (solid) vs bare (dashed)",
        18,
    )
    .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("kbit/s")
        .y_desc("encode p50, ms")
        .draw()?;
    let mut i = 0;
    for codec in ["H264", "H265"] {
        for fps in [30, 60] {
            let mut pts: Vec<_> = e
                .cells
                .iter()
                .filter(|c| c.cell.codec.as_str() == codec && c.cell.fps == fps)
                .collect();
            pts.sort_by_key(|c| c.cell.bitrate_kbps);
            let color = Palette99::pick(i);
            let pipe: Vec<(f64, f64)> = pts
                .iter()
                .map(|c| (c.cell.bitrate_kbps as f64, c.pipeline.encode_ms.p50))
                .collect();
            let bare: Vec<(f64, f64)> = pts
                .iter()
                .map(|c| (c.cell.bitrate_kbps as f64, c.bare.encode_ms.p50))
                .collect();
            chart
                .draw_series(LineSeries::new(pipe.clone(), color.stroke_width(2)))?
                .label(format!("{codec} {fps} fps"))
                .legend(legend_line(color.stroke_width(2)));
            chart.draw_series(pipe.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
            chart.draw_series(DashedLineSeries::new(bare, 6, 4, color.stroke_width(1)))?;
            i += 1;
        }
    }
    finish(&root, &mut chart, SeriesLabelPosition::UpperLeft)
}

fn plot_density(path: &Path, d: &DensityResults) -> PlotResult {
    let root = canvas(path)?;
    let xmax = d.levels.iter().map(|l| l.sessions).max().unwrap_or(1) as f64 + 1.0;
    let xmax = xmax.max(d.bound + 1.0);
    let ymax = (d.cores as f64 * 100.0)
        .max(d.levels.iter().map(|l| l.cpu_percent).fold(0.0, f64::max))
        * 1.1;
    let mut chart = frame(
        &root,
        format!(
            "720P30 H.264 sessions vs CPU (bound {:.1}, sustained {})",
            d.bound, d.sustained
        ),
        20,
    )
    .right_y_label_area_size(55)
    .build_cartesian_2d(0.0..xmax, 0.0..ymax)?
    .set_secondary_coord(0.0..xmax, 0.0..10.0);
    chart
        .configure_mesh()
        .x_desc("concurrent sessions")
        .y_desc("CPU, % of one core")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("frames dropped, %")
        .draw()?;
    let cpu: Vec<(f64, f64)> = d
        .levels
        .iter()
        .map(|l| (l.sessions as f64, l.cpu_percent))
        .collect();
    chart
        .draw_series(LineSeries::new(cpu.clone(), BLUE.stroke_width(2)))?
        .label("CPU %")
        .legend(legend_line(BLUE.stroke_width(2)));
    chart.draw_series(cpu.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
    let drops: Vec<(f64, f64)> = d
        .levels
        .iter()
        .map(|l| (l.sessions as f64, (l.drop_fraction * 100.0).min(10.0)))
        .collect();
    chart
        .draw_secondary_series(LineSeries::new(drops, RED.stroke_width(2)))?
        .label("dropped % (right)")
        .legend(legend_line(RED.stroke_width(2)));
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(d.bound, 0.0), (d.bound, ymax)],
            BLACK.stroke_width(1),
        )))?
        .label("bare-encoder bound")
        .legend(legend_line(BLACK.stroke_width(1)));
    finish(&root, &mut chart, SeriesLabelPosition::UpperLeft)
}

fn plots(dir: &Path, l: &Latest) -> Vec<String> {
    let mut written = Vec::new();
    if !load_font() {
        println!("report: no TrueType font found; plots skipped");
        return written;
    }
    let mut out = |name: &str, r: PlotResult| match r {
        Ok(()) => written.push(name.to_owned()),
        Err(e) => println!("report: plot {name} failed: {e}"),
    };
    if let Some(e) = &l.encode {
        let mut series = Vec::new();
        for label in ["H264 720P30", "H265 720P30", "H264 540P30"] {
            if let Some(c) = e.cells.iter().find(|c| c.label == label) {
                series.push((
                    format!("{label} pipeline"),
                    c.pipeline.encode_samples.clone(),
                ));
                series.push((format!("{label} bare"), c.bare.encode_samples.clone()));
            }
        }
        out(
            "encode_cdf.png",
            plot_cdfs(
                &dir.join("encode_cdf.png"),
                "encode latency per frame (encoder sink → src)",
                &series,
            ),
        );
        out(
            "encode_vs_bitrate.png",
            plot_encode_vs_bitrate(&dir.join("encode_vs_bitrate.png"), e),
        );
    }
    if let Some(g) = &l.glass {
        let series = crate::glass_report::cdf_series(g);
        out(
            "glass_cdf.png",
            plot_cdfs(
                &dir.join("glass_cdf.png"),
                "glass-to-glass latency, loopback",
                &series,
            ),
        );
    }
    if let Some(d) = &l.density {
        out("density.png", plot_density(&dir.join("density.png"), d));
    }
    written
}

/// Reads the parts in `parts` and writes `latest.json`, `REPORT.md` and the plots to `dir`.
pub fn write(parts: &Path, dir: &Path) -> Result<()> {
    let mut latest = Latest {
        generated_unix_ms: cloudphone_node::unix_ms(),
        machine: machine(),
        targets: Vec::new(),
        encode: read_part(parts, "encode")?,
        glass: read_part(parts, "glass")?,
        density: read_part(parts, "density")?,
        fleet: read_part(parts, "fleet")?,
        api: read_part(parts, "api")?,
        live: read_part(parts, "live")?,
        live_edge: read_part(parts, "live-edge")?,
    };
    latest.targets = targets(&latest);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("latest.json"), serde_json::to_vec_pretty(&latest)?)
        .context("writing latest.json")?;
    std::fs::write(dir.join("REPORT.md"), markdown(&latest)).context("writing REPORT.md")?;
    let written = plots(dir, &latest);
    println!(
        "report: {} (plots: {})",
        dir.join("REPORT.md").display(),
        written.join(", ")
    );
    for t in &latest.targets {
        println!(
            "target: {:<60} {:<10} {:<45} {}",
            t.what,
            t.target,
            t.measured,
            met(t.met)
        );
    }
    Ok(())
}
