//! System packages the project needs, and installing the missing ones with apt.
//!
//! The lists live here and nowhere else; `docs/deploy.md` names the subset a production host needs.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// What running the daemons (and so `cargo xtask demo`) needs: displays and input for the x11
/// runtime, bubblewrap for the sandbox, a PulseAudio server per x11 instance (its null sink's
/// monitor is the instance's sound; `pulseaudio-utils` has `pactl`/`paplay` for apps and tests),
/// GStreamer for encoding (`gstreamer1.0-pulseaudio` is `pulsesrc`), PostgreSQL for a shared store.
pub(crate) const DEMO_PACKAGES: &[&str] = &[
    "xvfb",
    "x11-apps",
    "x11-utils",
    "xdotool",
    "xterm",
    "bubblewrap",
    "pulseaudio",
    "pulseaudio-utils",
    "postgresql",
    "gstreamer1.0-tools",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-libav",
    "gstreamer1.0-nice",
    "gstreamer1.0-pulseaudio",
    "libgstreamer1.0-dev",
    "libgstreamer-plugins-base1.0-dev",
    "libgstreamer-plugins-bad1.0-dev",
    "pkg-config",
    "systemd",
];

/// What the test suite and the benches need on top of [`DEMO_PACKAGES`]: a real browser and its
/// driver, a TURN server, network namespaces, Python virtualenvs for the vendor SDK clients, and
/// the HTTP load generator of the api bench, and nginx with its RTMP module (the live bench's
/// baseline, started unprivileged from a temporary directory with its own configuration).
pub(crate) const TEST_EXTRA_PACKAGES: &[&str] = &[
    "chromium",
    "chromium-driver",
    "coturn",
    "iproute2",
    "python3-venv",
    "wrk",
    "nginx",
    "libnginx-mod-rtmp",
];

/// Which package set to ensure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Demo,
    Test,
}

impl Purpose {
    /// The step heading for ensuring this set.
    pub(crate) fn heading(self) -> &'static str {
        match self {
            Purpose::Demo => "install-deps (demo set)",
            Purpose::Test => "install-deps (test set)",
        }
    }

    pub(crate) fn packages(self) -> Vec<&'static str> {
        match self {
            Purpose::Demo => DEMO_PACKAGES.to_vec(),
            Purpose::Test => DEMO_PACKAGES
                .iter()
                .chain(TEST_EXTRA_PACKAGES)
                .copied()
                .collect(),
        }
    }
}

/// Installs whatever of `purpose`'s packages is missing (as root), or says how to (otherwise).
pub(crate) fn ensure(purpose: Purpose) -> Result<()> {
    let packages = purpose.packages();
    let missing = missing(&packages)?;
    if missing.is_empty() {
        println!("all {} system packages are installed", packages.len());
        return Ok(());
    }
    println!("missing: {}", missing.join(" "));
    if !util::is_root() {
        bail!(
            "some system packages are missing; install them with:\n\n    \
             sudo apt-get update && sudo apt-get install -y --no-install-recommends {}\n",
            missing.join(" ")
        );
    }
    util::run(apt().arg("update"))?;
    util::run(
        apt()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = self::missing(&missing)?;
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    Ok(())
}

fn apt() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// The packages dpkg does not report as `install ok installed`.
fn missing<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>> {
    let mut missing = Vec::new();
    for &pkg in packages {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .output()
            .context("cannot run dpkg-query: this command expects Debian or Ubuntu")?;
        // Unknown packages exit non-zero; removed-but-configured ones say `deinstall ok config-files`.
        if !out.status.success() || !is_installed(&String::from_utf8_lossy(&out.stdout)) {
            missing.push(pkg);
        }
    }
    Ok(missing)
}

fn is_installed(status: &str) -> bool {
    status.trim() == "install ok installed"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_set_contains_demo_set_without_duplicates() {
        let test = Purpose::Test.packages();
        for pkg in DEMO_PACKAGES {
            assert!(test.contains(pkg), "{pkg}");
        }
        let mut sorted = test.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), test.len());
    }

    #[test]
    fn dpkg_status_parsing() {
        assert!(is_installed("install ok installed"));
        assert!(!is_installed("deinstall ok config-files"));
        assert!(!is_installed("unknown ok not-installed"));
        assert!(!is_installed(""));
    }
}
