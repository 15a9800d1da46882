//! Density: how many concurrent 720P30 H.264 encoders this host sustains with < 1 % of frames
//! dropped, next to the bound the bare encoder sets on the same cores:
//! `cores × 1000 ms ÷ (bare CPU ms/frame × fps)`.

use std::time::Duration;

use anyhow::{Context, Result};
use cloudphone_core::video::{Codec, Definition};
use cloudphone_node::runtime::CaptureSource;
use cloudphone_node::streaming::pipeline::{EncodePipeline, PipelineOptions};
use serde::{Deserialize, Serialize};

use crate::encode::{self, Cell};
use crate::stats::{CpuMeter, cores};

/// A level is sustained below this fraction of frames dropped.
pub const MAX_DROP: f64 = 0.01;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Level {
    pub sessions: usize,
    /// Frames not delivered: 1 − encoded ÷ (fps × seconds × sessions).
    pub drop_fraction: f64,
    /// Process CPU, % of one core (all sessions).
    pub cpu_percent: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DensityResults {
    pub smoke: bool,
    pub cell: Cell,
    pub cores: usize,
    /// Bare encoder (source included), CPU ms per frame, unpaced.
    pub bare_cpu_ms_per_frame: f64,
    pub bound: f64,
    pub levels: Vec<Level>,
    /// The most sessions with < 1 % dropped.
    pub sustained: usize,
}

fn measure_level(
    cell: &Cell,
    sessions: usize,
    warmup: Duration,
    window: Duration,
) -> Result<Level> {
    let (width, height) = cell.size();
    let settings = cell.encoder_settings("x264enc");
    let options = PipelineOptions {
        test_pattern: encode::PATTERN.to_owned(),
        ..PipelineOptions::default()
    };
    let mut running = Vec::new();
    let mut drains = Vec::new();
    for _ in 0..sessions {
        let (p, mut rx) = EncodePipeline::start_with(
            &CaptureSource::TestPattern { width, height },
            &settings,
            &options,
        )
        .context("starting a pipeline")?;
        drains.push(std::thread::spawn(
            move || while rx.blocking_recv().is_some() {},
        ));
        running.push(p);
    }
    std::thread::sleep(warmup);
    let before: Vec<u64> = running.iter().map(|p| p.stats().frames_encoded).collect();
    let meter = CpuMeter::start();
    std::thread::sleep(window);
    let after: Vec<u64> = running.iter().map(|p| p.stats().frames_encoded).collect();
    let (cpu_percent, seconds) = (meter.percent(), meter.wall_seconds());
    drop(running);
    for d in drains {
        let _ = d.join();
    }
    let encoded: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    let expected = f64::from(cell.fps) * seconds * sessions as f64;
    Ok(Level {
        sessions,
        drop_fraction: (1.0 - encoded as f64 / expected).max(0.0),
        cpu_percent,
        seconds,
    })
}

pub fn run(smoke: bool) -> Result<DensityResults> {
    let cell = Cell::new(Codec::H264, Definition::P720, 30);
    let bare_ms = encode::bare_cpu_ms_per_frame(&cell, if smoke { 30 } else { 300 })?;
    let cores = cores();
    let bound = cores as f64 * 1000.0 / (bare_ms * f64::from(cell.fps));
    println!(
        "density: bare x264enc 720P (source included) {bare_ms:.2} CPU ms/frame → bound {bound:.1} sessions at 30 fps on {cores} cores"
    );
    let (warmup, window) = if smoke {
        (Duration::from_millis(500), Duration::from_secs(1))
    } else {
        (Duration::from_secs(2), Duration::from_secs(6))
    };
    let (start, last) = if smoke {
        (1, 2)
    } else {
        (
            ((bound * 0.5).floor() as usize).max(1),
            (bound * 1.5).ceil() as usize + 1,
        )
    };
    let mut levels = Vec::new();
    let mut sustained = 0;
    for sessions in start..=last {
        let level = measure_level(&cell, sessions, warmup, window)?;
        println!(
            "density: {sessions:>3} sessions  dropped {:>5.2} %  cpu {:>4.0} %",
            level.drop_fraction * 100.0,
            level.cpu_percent
        );
        let ok = level.drop_fraction < MAX_DROP;
        levels.push(level);
        if ok {
            sustained = sessions;
        } else if !smoke {
            break;
        }
    }
    println!("density: sustained {sustained} sessions (bound {bound:.1})");
    Ok(DensityResults {
        smoke,
        cell,
        cores,
        bare_cpu_ms_per_frame: bare_ms,
        bound,
        levels,
        sustained,
    })
}
