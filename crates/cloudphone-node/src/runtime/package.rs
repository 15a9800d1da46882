//! App packages for the runtimes that run apps in a bwrap sandbox (x11, synthetic): the
//! package format, its manifest and the checks that keep a hostile archive inside the
//! instance's data dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sandbox::{self, HostLayout, SandboxSpec};
use super::{CommandOutput, InstancePaths, RuntimeError};

/// Largest manifest read.
const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest archive listing accepted (about 30k entries).
const MAX_LISTING_BYTES: usize = 4 * 1024 * 1024;
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Where the package file appears inside the sandbox.
const PACKAGE_IN_SANDBOX: &str = "/tmp/cloudphone-package";

/// `app.json`, the manifest at the top level of an app package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppManifest {
    /// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`; also the install directory name.
    pub name: String,
    pub version: String,
    /// Path of the program to run, relative to the app's directory.
    pub exec: String,
}

impl AppManifest {
    /// Checks the fields that become paths.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let name_ok = self.name.len() <= 64
            && self
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(format!("bad app name {:?}", self.name));
        }
        if self.version.is_empty()
            || self.version.len() > 64
            || self.version.chars().any(char::is_control)
        {
            return Err(format!("bad app version {:?}", self.version));
        }
        if !is_safe_relative(&self.exec) || self.exec.ends_with('/') {
            return Err(format!("bad exec path {:?}", self.exec));
        }
        Ok(())
    }
}

/// A relative path with no `..`, no absolute start and no empty or control characters.
pub(crate) fn is_safe_relative(path: &str) -> bool {
    let trimmed = path.strip_prefix("./").unwrap_or(path);
    !trimmed.is_empty()
        && !trimmed.starts_with('/')
        && !trimmed.chars().any(char::is_control)
        && trimmed.split('/').all(|part| part != "..")
}

/// Installs an app package into an instance's data dir and returns its manifest.
///
/// **Package format**: a tar archive, optionally gzip-compressed (`.tar.gz`), whose top
/// level holds `app.json`: `{ "name": "...", "version": "...", "exec": "relative/path" }`
/// (see [`AppManifest`]). Every member must be a relative path without `..`. The archive is
/// unpacked to `/data/apps/<name>/` (replacing a previous version), and `exec` must name a
/// file in it.
///
/// Listing, unpacking and moving all happen inside the instance's sandbox, where only
/// `/data` is writable: even a hostile archive (symlinks, odd names) or symlinks the
/// instance planted in its own data dir cannot make anything land outside that instance's
/// data. The listing check rejects unsafe members before anything is unpacked.
pub(crate) async fn install_tar_package(
    bwrap: &Path,
    layout: &HostLayout,
    paths: &InstancePaths,
    package: &Path,
) -> Result<AppManifest, RuntimeError> {
    let package = tokio::fs::canonicalize(package)
        .await
        .map_err(|e| RuntimeError::Install(format!("package {}: {e}", package.display())))?;
    if !tokio::fs::metadata(&package).await?.is_file() {
        return Err(RuntimeError::Install(
            "package is not a regular file".to_owned(),
        ));
    }
    let mut sb = SandboxSpec::for_instance(paths);
    sb.ro_binds
        .push((package, PathBuf::from(PACKAGE_IN_SANDBOX)));
    let run = |argv: Vec<String>, cap: usize| {
        let cmd = sandbox::command(bwrap, layout, &sb, &argv);
        sandbox::run_capped(cmd, INSTALL_TIMEOUT, cap)
    };
    let fail = |step: &str, out: &CommandOutput| {
        RuntimeError::Install(format!(
            "{step}: exit {}: {}",
            out.exit_code,
            out.stderr.trim()
        ))
    };

    let listing = run(
        vec!["tar".into(), "-tf".into(), PACKAGE_IN_SANDBOX.into()],
        MAX_LISTING_BYTES,
    )
    .await?;
    if listing.exit_code != 0 {
        return Err(fail("not a tar archive", &listing));
    }
    if listing.truncated {
        return Err(RuntimeError::Install(
            "archive has too many entries".to_owned(),
        ));
    }
    check_listing(&listing.stdout).map_err(RuntimeError::Install)?;

    let script = format!(
        "set -eu\n\
         rm -rf /data/apps/.incoming\n\
         mkdir -p /data/apps/.incoming\n\
         tar -xf {PACKAGE_IN_SANDBOX} -C /data/apps/.incoming --no-same-owner --no-same-permissions\n\
         test -f /data/apps/.incoming/app.json\n\
         test ! -L /data/apps/.incoming/app.json\n\
         head -c {MAX_MANIFEST_BYTES} /data/apps/.incoming/app.json\n"
    );
    let unpacked = run(sandbox::shell_argv(&script), MAX_MANIFEST_BYTES).await?;
    let cleanup = || run(sandbox::shell_argv("rm -rf /data/apps/.incoming"), 4096);
    if unpacked.exit_code != 0 {
        let _ = cleanup().await;
        return Err(fail("unpack", &unpacked));
    }
    let manifest = match serde_json::from_str::<AppManifest>(&unpacked.stdout)
        .map_err(|e| format!("app.json: {e}"))
        .and_then(|m| m.validate().map(|()| m))
    {
        Ok(m) => m,
        Err(e) => {
            let _ = cleanup().await;
            return Err(RuntimeError::Install(e));
        }
    };

    // Names go in as positional parameters, never spliced into the script.
    let script = "set -eu\n\
                  test -f \"/data/apps/.incoming/$2\"\n\
                  rm -rf \"/data/apps/$1\"\n\
                  mv /data/apps/.incoming \"/data/apps/$1\"\n";
    let mut argv = sandbox::shell_argv(script);
    argv.extend([
        "sh".to_owned(),
        manifest.name.clone(),
        manifest.exec.clone(),
    ]);
    let moved = run(argv, 4096).await?;
    if moved.exit_code != 0 {
        let _ = cleanup().await;
        return Err(fail(
            &format!("exec {:?} missing or install failed", manifest.exec),
            &moved,
        ));
    }
    Ok(manifest)
}

/// Rejects archives with absolute or `..` members and those without a top-level `app.json`.
pub(crate) fn check_listing(listing: &str) -> Result<(), String> {
    let mut has_manifest = false;
    for member in listing.lines() {
        let trimmed = member.trim_end_matches('/');
        if trimmed.is_empty() || trimmed == "." {
            continue;
        }
        if !is_safe_relative(trimmed) {
            return Err(format!("unsafe member {member:?}"));
        }
        if trimmed == "app.json" || trimmed == "./app.json" {
            has_manifest = true;
        }
    }
    if has_manifest {
        Ok(())
    } else {
        Err("no app.json at the top level".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_validation() {
        let ok = AppManifest {
            name: "demo-app_1.0".into(),
            version: "1.0".into(),
            exec: "bin/run".into(),
        };
        assert!(ok.validate().is_ok());
        let bad = [
            AppManifest {
                name: "../x".into(),
                ..ok.clone()
            },
            AppManifest {
                name: ".hidden".into(),
                ..ok.clone()
            },
            AppManifest {
                name: "".into(),
                ..ok.clone()
            },
            AppManifest {
                name: "a/b".into(),
                ..ok.clone()
            },
            AppManifest {
                exec: "/bin/sh".into(),
                ..ok.clone()
            },
            AppManifest {
                exec: "../../etc/passwd".into(),
                ..ok.clone()
            },
            AppManifest {
                exec: "bin/".into(),
                ..ok.clone()
            },
            AppManifest {
                version: "".into(),
                ..ok.clone()
            },
        ];
        for m in bad {
            assert!(m.validate().is_err(), "{m:?}");
        }
    }

    #[test]
    fn listing_checks() {
        assert!(check_listing("app.json\nbin/\nbin/run\n").is_ok());
        assert!(check_listing("./\n./app.json\n./bin/run\n").is_ok());
        assert!(check_listing("bin/run\n").is_err(), "no manifest");
        assert!(
            check_listing("sub/app.json\n").is_err(),
            "manifest not at top"
        );
        assert!(check_listing("app.json\n../evil\n").is_err());
        assert!(check_listing("app.json\na/../../evil\n").is_err());
        assert!(check_listing("app.json\n/etc/passwd\n").is_err());
    }
}
