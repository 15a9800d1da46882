//! The demo phone's app (`crates/cloudphone-demo-app`): built next to the daemons and run by the
//! demo node's x11 instances in place of the runtime's default (`xeyes`), from the build tree
//! through `[sandbox] ro_binds`, so the demo has a text field to type into, buttons that react
//! to taps and a tone to hear.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::util;

/// The app's package and binary name, and its name under the sandbox's bin dir.
const NAME: &str = "cloudphone-demo-app";
/// Where `[sandbox] ro_binds` entries appear inside an instance's sandbox (the node's
/// `runtime::sandbox::RO_BIN_DIR`).
const SANDBOX_BIN_DIR: &str = "/run/cloudphone/bin";

/// Builds the app (debug, like the daemons); returns its path.
pub(super) fn build() -> Result<PathBuf> {
    util::run(util::cargo().args(["build", "-p", NAME]))?;
    Ok(util::repo_root().join("target/debug").join(NAME))
}

/// The `[x11] launcher` that runs the app.
pub(super) fn launcher() -> String {
    format!("exec {SANDBOX_BIN_DIR}/{NAME}")
}

/// The `[sandbox.ro_binds]` entry's key and host path.
pub(super) fn ro_bind(app: &Path) -> (&'static str, String) {
    (NAME, app.display().to_string())
}
