//! A fresh PostgreSQL database per test. `cargo xtask test` starts one server for the whole
//! suite and passes it in `CLOUDPHONE_TEST_PG_URL`; without it, a throwaway cluster is started
//! here (as the `postgres` user when running as root), so the tests never skip PostgreSQL.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::process::output_of;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Server URL without a database name, e.g. `postgres://postgres@127.0.0.1:5432`.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("CLOUDPHONE_TEST_PG_URL") {
        Ok(url) => url
            .rsplit_once('/')
            .map(|(server, _db)| server.to_string())
            .unwrap_or(url),
        Err(_) => start_cluster(),
    })
}

/// Starts a cluster that lives as long as the test process (its dir is under /tmp and the
/// server is stopped by `pg_ctl` at exit via a detached watcher on our pid).
fn start_cluster() -> String {
    let dir = tempfile::Builder::new()
        .prefix("cloudphone-pg-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let data = dir.join("data");
    let port = crate::free_port();
    let as_root = nix::unistd::Uid::effective().is_root();
    let run = |args: &[&str]| {
        let mut command = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c.args(args);
            c
        } else {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        output_of(&mut command, &format!("{args:?}"));
    };
    if as_root {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "chown pg dir");
    }
    let initdb = format!("{PG_BIN}/initdb");
    let pg_ctl = format!("{PG_BIN}/pg_ctl");
    let data_s = data.to_string_lossy().to_string();
    run(&[
        &initdb,
        "-D",
        &data_s,
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
    ]);
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
        dir.display()
    );
    run(&[
        &pg_ctl,
        "-D",
        &data_s,
        "-w",
        "-l",
        &format!("{}/log", dir.display()),
        "-o",
        &opts,
        "start",
    ]);
    // Stop the server when this test process exits, whatever way it exits.
    let me = std::process::id();
    let stopper = format!(
        "while [ -d /proc/{me} ]; do sleep 1; done; {pg_ctl} -D {data_s} -m immediate stop; rm -rf {}",
        dir.display()
    );
    let mut watcher = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &stopper]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &stopper]);
        c
    };
    let mut watcher = watcher.spawn().expect("spawn pg watcher");
    // Reaped if it ends while we live; otherwise it outlives us by design, to stop the server.
    std::thread::spawn(move || watcher.wait());
    format!("postgres://postgres@127.0.0.1:{port}")
}

/// Creates an empty database and returns its URL.
pub fn fresh_database() -> String {
    let server = server_url();
    let name = format!("t_{}", uuid_like());
    output_of(
        Command::new("psql")
            .arg(format!("{server}/postgres"))
            .args(["-v", "ON_ERROR_STOP=1", "-qc"])
            .arg(format!("CREATE DATABASE {name}")),
        "create database",
    );
    format!("{server}/{name}")
}

/// Makes the database at `db_url` (from [`fresh_database`]) unreachable, or reachable again,
/// while the server keeps running: a database outage for one client without stopping the
/// suite's shared server. Refusing also ends every session already open on it.
pub fn set_connections_allowed(db_url: &str, allowed: bool) {
    let (server, name) = db_url.rsplit_once('/').expect("a database URL");
    let mut sql = format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allowed};");
    if !allowed {
        sql.push_str(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ));
    }
    output_of(
        Command::new("psql")
            .arg(format!("{server}/postgres"))
            .args(["-v", "ON_ERROR_STOP=1", "-qc"])
            .arg(sql),
        "allow or refuse connections",
    );
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// Where the suite keeps scratch files that must outlive a tempdir guard.
pub fn scratch_dir() -> PathBuf {
    std::env::temp_dir()
}
