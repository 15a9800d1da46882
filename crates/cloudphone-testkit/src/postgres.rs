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
    let cluster = Cluster::start();
    let (pg_ctl, data_s, dir) = (
        format!("{PG_BIN}/pg_ctl"),
        cluster.data.clone(),
        cluster.dir.display().to_string(),
    );
    let url = cluster.server_url();
    // The watcher below stops and removes it, not the guard.
    std::mem::forget(cluster);
    // Stop the server when this test process exits, whatever way it exits.
    let me = std::process::id();
    let stopper = format!(
        "while [ -d /proc/{me} ]; do sleep 1; done; {pg_ctl} -D {data_s} -m immediate stop; rm -rf {dir}"
    );
    let mut watcher = as_postgres(&["sh", "-c", &stopper]);
    let mut watcher = watcher.spawn().expect("spawn pg watcher");
    // Reaped if it ends while we live; otherwise it outlives us by design, to stop the server.
    std::thread::spawn(move || watcher.wait());
    url
}

/// `args` as a command run by the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres(args: &[&str]) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c.args(args);
        c
    } else {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    }
}

/// A PostgreSQL server of one test's own, which the test may stop and start again on the same
/// port (a database restart), unlike the suite's shared one. Stopped and deleted on drop.
pub struct Cluster {
    dir: PathBuf,
    data: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// A further address it listens on and accepts a /24 of, and that its URLs name (a
    /// [`crate::netns::Net`]'s gateway, for daemons in namespaces): see [`Cluster::start_on`].
    also_on: Option<std::net::Ipv4Addr>,
}

impl Cluster {
    /// `initdb` in a fresh temp dir (trust auth, no fsync) and start on a free port.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`Cluster::start`], listening on `addr` too (a [`crate::netns::Net::gateway`], which
    /// must exist) and trusting clients of its /24, so daemons in the net's namespaces reach
    /// it; its URLs name `addr`.
    pub fn start_on(addr: std::net::Ipv4Addr) -> Self {
        Self::start_with(Some(addr))
    }

    fn start_with(also_on: Option<std::net::Ipv4Addr>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cloudphone-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        if nix::unistd::Uid::effective().is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status();
            assert!(status.map(|s| s.success()).unwrap_or(false), "chown pg dir");
        }
        let data = dir.join("data").to_string_lossy().to_string();
        let cluster = Self {
            dir,
            data,
            port: crate::free_port(),
            also_on,
        };
        let initdb = format!("{PG_BIN}/initdb");
        output_of(
            &mut as_postgres(&[
                &initdb,
                "-D",
                &cluster.data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ]),
            "initdb",
        );
        if let Some(addr) = also_on {
            let [a, b, c, _] = addr.octets();
            let hba = format!("{}/pg_hba.conf", cluster.data);
            let mut text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            text.push_str(&format!("host all all {a}.{b}.{c}.0/24 trust\n"));
            std::fs::write(&hba, text).expect("write pg_hba.conf");
        }
        cluster.start_again();
        cluster
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn start_again(&self) {
        let listen = match self.also_on {
            Some(addr) => format!("127.0.0.1,{addr}"),
            None => "127.0.0.1".to_string(),
        };
        let opts = format!(
            "-p {} -k {} -c listen_addresses={listen} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = format!("{}/log", self.dir.display());
        self.pg_ctl(&["-w", "-l", &log, "-o", &opts, "start"]);
    }

    /// `pg_ctl stop -m fast`: ends every session (clients see their connections closed) and
    /// shuts down cleanly; returns once the server is gone.
    pub fn stop_fast(&self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let mut all = vec![pg_ctl.as_str(), "-D", &self.data];
        all.extend_from_slice(args);
        output_of(&mut as_postgres(&all), &format!("pg_ctl {args:?}"));
    }

    /// Server URL without a database name.
    pub fn server_url(&self) -> String {
        let host = self.also_on.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        format!("postgres://postgres@{host}:{}", self.port)
    }

    /// Creates an empty database on this server and returns its URL.
    pub fn fresh_database(&self) -> String {
        database_on(&self.server_url())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let _ = as_postgres(&[&pg_ctl, "-D", &self.data, "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates an empty database and returns its URL.
pub fn fresh_database() -> String {
    database_on(server_url())
}

/// Creates an empty database on `server` (a URL without a database name); returns its URL.
fn database_on(server: &str) -> String {
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
