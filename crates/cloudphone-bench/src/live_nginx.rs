//! The live bench's baseline: nginx with Debian's `libnginx-mod-rtmp`, started from a
//! temporary directory with its own configuration (RTMP and HTTP on free loopback ports, HLS
//! with 1 s fragments, one worker as nginx-rtmp's live mode needs), no root needed, stopped
//! with the bench. nginx-rtmp has no HTTP-FLV output (that is the separate
//! nginx-http-flv-module, not in Debian), so its FLV figure is its RTMP one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where Debian puts the module.
pub const MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
const NGINX: &str = "/usr/sbin/nginx";
/// The application and stream the bench pushes to.
pub const APP: &str = "live";
pub const STREAM: &str = "bench";

pub struct Nginx {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub rtmp_port: u16,
    pub http_port: u16,
}

/// Why the baseline cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    for p in [NGINX, MODULE] {
        if !Path::new(p).exists() {
            return Some(format!(
                "{p} missing: `cargo xtask install-deps --test` installs nginx and libnginx-mod-rtmp"
            ));
        }
    }
    None
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The configuration: everything under `dir`, nothing of `/etc/nginx`.
pub fn config(dir: &Path, rtmp_port: u16, http_port: u16) -> String {
    let d = dir.display();
    format!(
        "load_module {MODULE};
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 20000; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        chunk_size 4096;
        application {APP} {{
            live on;
            hls on;
            hls_path {d}/hls;
            hls_fragment 1s;
            hls_playlist_length 4s;
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    server {{
        listen 127.0.0.1:{http_port};
        location /{APP}/ {{
            alias {d}/hls/;
            types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
            add_header Cache-Control no-cache;
        }}
    }}
}}
"
    )
}

impl Nginx {
    pub fn start() -> Result<Nginx> {
        if let Some(why) = unavailable() {
            bail!(why);
        }
        let dir = tempfile::Builder::new()
            .prefix("cp-live-nginx-")
            .tempdir_in("/var/tmp")?;
        // Started as root, nginx's workers run as `nobody`: they must reach the HLS directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        for sub in ["hls", "tmp"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))?;
        }
        let (rtmp_port, http_port) = (free_port()?, free_port()?);
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), rtmp_port, http_port))?;
        let child = Command::new(NGINX)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let mut n = Nginx {
            child: Some(child),
            dir,
            rtmp_port,
            http_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", rtmp_port)).is_err() {
            if let Some(c) = n.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("nginx exited ({status}): {}", n.error_log());
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen in 10 s: {}", n.error_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn hls_dir(&self) -> PathBuf {
        self.dir.path().join("hls")
    }

    pub fn push_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/{APP}/{STREAM}", self.rtmp_port)
    }

    pub fn hls_url(&self) -> String {
        format!("http://127.0.0.1:{}/{APP}/{STREAM}.m3u8", self.http_port)
    }

    /// `nginx version: nginx/1.22.1` and the module's package version.
    pub fn version() -> String {
        let nginx = Command::new(NGINX)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        let module = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", "libnginx-mod-rtmp"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        format!(
            "nginx-rtmp (libnginx-mod-rtmp {module}, {})",
            nginx.trim_start_matches("nginx version: ")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM to the master: it stops its workers; killing it outright would orphan them.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_everything_in_its_directory() {
        let c = config(Path::new("/var/tmp/x"), 1935, 8080);
        assert!(c.contains("listen 127.0.0.1:1935;"));
        assert!(c.contains("listen 127.0.0.1:8080;"));
        assert!(c.contains("hls_fragment 1s;"));
        assert!(c.contains("hls_path /var/tmp/x/hls;"));
        assert!(!c.contains("/etc/nginx"));
        assert!(!c.contains("/var/log"));
    }
}
