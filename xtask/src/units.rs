//! Checks `deploy/systemd/*.service` with `systemd-analyze`, against the freshly built binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, TempDir};

/// The units in `deploy/systemd/`, and the binary each one starts.
pub(crate) const UNITS: &[(&str, &str)] = &[
    ("cloudphone-control.service", "cloudphone-control"),
    ("cloudphone-node.service", "cloudphone-node"),
];

/// Where the units expect the binaries on a host (see docs/deploy.md).
const INSTALLED_BIN_DIR: &str = "/usr/local/bin";

/// Runs `systemd-analyze verify` on copies of the units whose `ExecStart=` points at
/// `bin_dir` (verify insists that the binary exists), and fails on any complaint about them.
///
/// Verify exits 0 on unknown keys and unparsable values (it only logs them), so its output is
/// the verdict: any line naming one of our units is a failure.
pub(crate) fn verify(root: &Path, bin_dir: &Path) -> Result<()> {
    let tmp = TempDir::new("cloudphone-units", 0o755)?;
    let copies = copy_units(root, bin_dir, tmp.path())?;

    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]).args(&copies);
    println!("$ {}", util::display(&cmd));
    let out = cmd.output().context("cannot run systemd-analyze")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{text}");
    let complaints = complaints(&text);
    if !out.status.success() || !complaints.is_empty() {
        bail!(
            "systemd-analyze verify: {} ({} complaint(s) about our units)",
            out.status,
            complaints.len()
        );
    }
    println!("units verify cleanly");

    // Informational: how exposed each unit is, by systemd's own scoring.
    for copy in &copies {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(copy)
            .output();
        if let Ok(out) = out {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().find(|l| l.contains("Overall exposure level")) {
                println!("{}", line.trim_start_matches('→').trim());
            }
        }
    }
    Ok(())
}

/// Copies the units into `dest`, rewriting the installed binary paths to `bin_dir`.
fn copy_units(root: &Path, bin_dir: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    let mut copies = Vec::new();
    for (unit, binary) in UNITS {
        let src = root.join("deploy/systemd").join(unit);
        let text = std::fs::read_to_string(&src)
            .with_context(|| format!("cannot read {}", src.display()))?;
        let installed = format!("{INSTALLED_BIN_DIR}/{binary}");
        if !text.contains(&format!("ExecStart={installed} ")) {
            bail!("{}: ExecStart= does not start {installed}", src.display());
        }
        let built = bin_dir.join(binary);
        let copy = dest.join(unit);
        std::fs::write(
            &copy,
            text.replace(&installed, &built.display().to_string()),
        )?;
        copies.push(copy);
    }
    Ok(copies)
}

/// The lines of verify's output that are about our units (it also reports on dependencies).
fn complaints(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| UNITS.iter().any(|(unit, _)| line.contains(unit)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn units_verify_against_stand_in_binaries() {
        let bins = TempDir::new("cloudphone-fake-bin", 0o755).unwrap();
        for (_, binary) in UNITS {
            let path = bins.path().join(binary);
            std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        verify(&util::repo_root(), bins.path()).unwrap();
    }

    #[test]
    fn a_missing_binary_is_a_failure() {
        let empty = TempDir::new("cloudphone-no-bin", 0o755).unwrap();
        assert!(verify(&util::repo_root(), empty.path()).is_err());
    }

    #[test]
    fn complaints_are_lines_about_our_units() {
        let out = "/tmp/x/cloudphone-node.service:3: Unknown key 'Foo' in section [Service], ignoring.\n\
                   sysinit.target: some unrelated noise\n";
        assert_eq!(complaints(out).len(), 1);
    }
}
