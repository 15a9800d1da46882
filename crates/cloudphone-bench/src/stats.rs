//! Percentiles and CPU time: the two numbers every figure in the report is made of.

use serde::{Deserialize, Serialize};

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of sorted samples (`q` in 0..=1); no interpolation, so every
/// figure reported is a value that was actually measured.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return Summary::default();
    }
    Summary {
        n: sorted.len(),
        p50: percentile(&sorted, 0.50),
        p90: percentile(&sorted, 0.90),
        p99: percentile(&sorted, 0.99),
        max: sorted[sorted.len() - 1],
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    }
}

/// CPU seconds (user + system) this process has used, all threads. Each bench runs one
/// workload at a time, so a delta over a run is that workload's CPU.
pub fn process_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => f64::NAN,
    }
}

/// Wall time and CPU time from a starting point; `percent()` is CPU as % of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    wall: std::time::Instant,
    cpu: f64,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self {
            wall: std::time::Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds() - self.cpu
    }

    pub fn wall_seconds(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }

    pub fn percent(&self) -> f64 {
        100.0 * self.cpu_seconds() / self.wall_seconds().max(1e-9)
    }
}

/// CPU cores the bounds are computed for.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(summarize(&[]).n, 0);
        assert_eq!(summarize(&[3.0]).p99, 3.0);
    }
}
