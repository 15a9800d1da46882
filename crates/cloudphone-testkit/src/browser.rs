//! Headless Chromium for page tests: the playwright-core driver `tests/browser/viewer.mjs`, run
//! by Node, one JSON command per line (see the script's header for the commands).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The workspace root (this crate lives in `crates/cloudphone-testkit`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `npm ci` in `tests/browser` unless playwright-core is already installed there.
fn ensure_playwright(dir: &Path) {
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm runs");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// One page in headless Chromium, driven by `tests/browser/viewer.mjs`; killed on drop.
pub struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Browser {
    /// Opens `url`; `env` goes to the driver (e.g. `VIEWER_TIMEZONE`).
    pub async fn start(url: &str, env: &[(&str, &str)]) -> Browser {
        let dir = workspace().join("tests/browser");
        ensure_playwright(&dir);
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("viewer.mjs"))
            .arg(url)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut browser = Browser {
            child,
            stdin,
            lines,
        };
        let loaded = browser.read().await;
        assert_eq!(loaded["event"], "loaded", "{loaded}");
        browser
    }

    async fn read(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the browser driver answers in time")
            .expect("reading the driver's output")
            .expect("the browser driver is alive");
        serde_json::from_str(&line).expect("the driver answers JSON")
    }

    /// Sends one command; returns the driver's reply, failed or not.
    pub async fn call(&mut self, cmd: Value) -> Value {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("the driver reads its stdin");
        self.read().await
    }

    /// Sends one command that must succeed; returns the reply.
    pub async fn ok(&mut self, cmd: Value) -> Value {
        let reply = self.call(cmd.clone()).await;
        assert_eq!(reply["ok"], true, "{cmd} → {reply}");
        reply
    }

    /// Signs in through a console page's login form (`/console/player`, `/console/usage`) as
    /// user `dev` of `domain` on project `cn-north-7`, as [`crate::fleet::Fleet::up`] makes them.
    pub async fn console_login(&mut self, domain: &str, password: &str) {
        for (selector, value) in [
            ("#domain", domain),
            ("#user", "dev"),
            ("#password", password),
            ("#project", "cn-north-7"),
        ] {
            self.fill(selector, value).await;
        }
        self.click("#loginBtn").await;
    }

    /// Types `value` into the field at `selector` (replacing what it held); must succeed.
    pub async fn fill(&mut self, selector: &str, value: &str) {
        self.ok(serde_json::json!({"cmd": "fill", "selector": selector, "value": value}))
            .await;
    }

    /// Picks the option `value` of the `<select>` at `selector`; must succeed.
    pub async fn select(&mut self, selector: &str, value: &str) {
        self.ok(serde_json::json!({"cmd": "select", "selector": selector, "value": value}))
            .await;
    }

    /// Clicks the element at `selector`; must succeed.
    pub async fn click(&mut self, selector: &str) {
        self.ok(serde_json::json!({"cmd": "click", "selector": selector}))
            .await;
    }

    /// Closes the browser and waits for the driver to exit.
    pub async fn quit(mut self) {
        let _ = self.call(serde_json::json!({"cmd": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}
