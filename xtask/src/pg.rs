//! A throwaway PostgreSQL cluster for the test suite: a temp dir, a free port, trust auth,
//! stopped and deleted when the guard drops (also when the tests fail).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{self, TempDir};

/// Where Debian's `postgresql` package puts the server binaries; 15 is bookworm's version.
const PG_LIB: &str = "/usr/lib/postgresql";
const PG_PREFERRED_VERSION: &str = "15";
/// Overrides the server binaries' directory (e.g. on a distribution with another layout).
const PG_BIN_ENV: &str = "CLOUDPHONE_PG_BIN";
/// The server refuses to run as root, so as root it runs as this (Debian-created) user.
const PG_OS_USER: &str = "postgres";
/// The database superuser initdb creates; trust auth lets it in without a password.
const PG_SUPERUSER: &str = "postgres";

/// A running throwaway cluster. Dropping it stops the server and removes its files.
pub(crate) struct Postgres {
    /// The server's binaries (`initdb`, `pg_ctl`, `createdb`).
    bin: PathBuf,
    /// The data directory, inside `dir`.
    data: PathBuf,
    /// The server log pg_ctl writes, shown when start-up fails.
    log: PathBuf,
    /// The TCP port on 127.0.0.1 the server listens on.
    port: u16,
    /// Whether server commands run via `runuser -u postgres` (we are root).
    as_os_user: bool,
    /// Whether the server may be running, so `Drop` knows to stop it.
    running: bool,
    /// Holds everything; declared last so it is removed after the server stops.
    dir: TempDir,
}

impl Postgres {
    /// Creates a cluster in a fresh temp dir, starts it on a free port and creates `database`.
    pub(crate) fn start(database: &str) -> Result<Self> {
        let bin = bin_dir()?;
        let as_os_user = util::is_root();
        let dir = TempDir::new("cloudphone-pg", 0o700)?;
        let sock = dir.path().join("sock");
        std::fs::DirBuilder::new().mode(0o700).create(&sock)?;
        if as_os_user {
            let user = nix::unistd::User::from_name(PG_OS_USER)?.with_context(|| {
                format!("no `{PG_OS_USER}` user: is the postgresql package installed?")
            })?;
            for path in [dir.path(), &sock] {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .with_context(|| format!("cannot chown {}", path.display()))?;
            }
        }
        let mut pg = Postgres {
            data: dir.path().join("data"),
            log: dir.path().join("postgres.log"),
            bin,
            port: 0,
            as_os_user,
            running: false,
            dir,
        };

        let t = Instant::now();
        let mut initdb = pg.server_cmd("initdb");
        initdb
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", PG_SUPERUSER, "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"]);
        quiet(&mut initdb)?;
        println!("initdb: {} ms", t.elapsed().as_millis());

        let t = Instant::now();
        // The port is free when we look but could be taken before the server binds: retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            pg.port = util::free_port()?;
            pg.running = true;
            match quiet(&mut pg.pg_ctl_start(&sock)) {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    eprintln!(
                        "PostgreSQL did not start on port {} ({e}); retrying",
                        pg.port
                    );
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "PostgreSQL did not start; its log ({}):\n{}",
                        pg.log.display(),
                        util::tail(&pg.log, 30)
                    )));
                }
            }
        }
        println!(
            "pg_ctl start: {} ms (port {})",
            t.elapsed().as_millis(),
            pg.port
        );

        let t = Instant::now();
        let mut createdb = Command::new(pg.bin.join("createdb"));
        createdb
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string()])
            .args(["-U", PG_SUPERUSER, database]);
        quiet(&mut createdb)?;
        println!("createdb {database}: {} ms", t.elapsed().as_millis());
        Ok(pg)
    }

    /// The URL clients use for `database` (trust auth, so no password).
    pub(crate) fn url(&self, database: &str) -> String {
        format!(
            "postgres://{PG_SUPERUSER}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// The directory holding the cluster (removed on drop).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server (fast shutdown, then immediate); `Drop` calls this too.
    pub(crate) fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let t = Instant::now();
        let mut result = Ok(());
        for mode in ["fast", "immediate"] {
            let mut stop = self.server_cmd("pg_ctl");
            stop.arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "-t", "20", "stop"]);
            result = quiet(&mut stop);
            if result.is_ok() {
                break;
            }
        }
        if result.is_ok() {
            self.running = false;
            println!("PostgreSQL stopped in {} ms", t.elapsed().as_millis());
        }
        result
    }

    fn pg_ctl_start(&self, sock: &Path) -> Command {
        // fsync and friends are off: the cluster is thrown away, and this makes tests faster.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            sock.display()
        );
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        cmd
    }

    /// A server-side command, run as the `postgres` user when we are root.
    fn server_cmd(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_os_user {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", PG_OS_USER, "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "warning: could not stop PostgreSQL in {}: {e:#}",
                self.dir.path().display()
            );
        }
    }
}

/// Runs a command with captured output, showing it only if the command fails.
fn quiet(cmd: &mut Command) -> Result<()> {
    // Nothing in a nested server should read our stdin.
    cmd.stdin(std::process::Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", util::display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}{}",
            util::display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The directory with `initdb` and `pg_ctl`: `$CLOUDPHONE_PG_BIN`, else Debian's version 15,
/// else Debian's newest installed version.
fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        return Ok(dir.into());
    }
    let preferred = Path::new(PG_LIB).join(PG_PREFERRED_VERSION).join("bin");
    if preferred.join("pg_ctl").exists() {
        return Ok(preferred);
    }
    let newest = std::fs::read_dir(PG_LIB)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            e.path()
                .join("bin/pg_ctl")
                .exists()
                .then_some((version, e.path()))
        })
        .max();
    match newest {
        Some((_, dir)) => Ok(dir.join("bin")),
        None => bail!(
            "no PostgreSQL server binaries under {PG_LIB}/*/bin (install `postgresql`, \
             or set {PG_BIN_ENV})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a real cluster, talks to it with psql, stops it, and checks nothing is left.
    #[test]
    fn throwaway_cluster_starts_answers_and_goes_away() {
        // `cargo xtask test` installs PostgreSQL first (`cargo xtask install-deps` alone does too).
        let mut pg = Postgres::start("cloudphone_test").unwrap();
        let dir = pg.dir().to_path_buf();
        let out = Command::new("psql")
            .args([
                &pg.url("cloudphone_test"),
                "-tAc",
                "select current_database()",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "cloudphone_test"
        );
        pg.stop().unwrap();
        drop(pg);
        assert!(!dir.exists());
    }
}
