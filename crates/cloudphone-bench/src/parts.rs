//! Where each bench leaves its results for the report, and how a bench reads its mode.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `CLOUDPHONE_BENCH_SMOKE=1` (or `--smoke`) runs the seconds-long version.
pub fn smoke_requested() -> bool {
    std::env::var_os("CLOUDPHONE_BENCH_SMOKE").is_some_and(|v| v != "0")
        || std::env::args().any(|a| a == "--smoke")
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `benches/results` in the workspace, or `CLOUDPHONE_BENCH_OUT` (the smoke test writes to a
/// temporary directory so it never overwrites a real run).
pub fn results_dir() -> PathBuf {
    std::env::var_os("CLOUDPHONE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("benches/results"))
}

/// Where the benches leave their JSON parts for the report: `target/bench-parts`, or
/// `CLOUDPHONE_BENCH_PARTS`. Kept out of `benches/results` so that only a whole report is
/// ever committed.
pub fn parts_dir() -> PathBuf {
    std::env::var_os("CLOUDPHONE_BENCH_PARTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/bench-parts"))
}

pub fn part_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

pub fn write_part<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<PathBuf> {
    let path = part_path(dir, name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A part, when that bench has run.
pub fn read_part<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>> {
    let path = part_path(dir, name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
