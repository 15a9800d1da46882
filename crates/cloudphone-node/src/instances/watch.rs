//! The crash watcher: instances meant to run whose processes died are marked failed and
//! restarted, a bounded number of times.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudphone_core::lifecycle::InstanceState;

use super::InstanceManager;

/// How often the watcher looks at running instances.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Restarts the watcher attempts in a row before leaving an instance failed.
const MAX_AUTO_RESTARTS: u32 = 3;
/// An instance that ran this long before dying gets a fresh restart budget.
const RESTART_BUDGET_RESET: Duration = Duration::from_secs(60);

impl InstanceManager {
    /// One watcher pass: instances meant to run whose processes died are marked failed and
    /// restarted, a bounded number of times.
    async fn watch_once(&self) {
        for entry in self.snapshot() {
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            {
                let s = entry.status();
                if s.state != InstanceState::Running
                    || s.desired != InstanceState::Running
                    || s.deleted
                {
                    continue;
                }
            }
            // Busy means an operation is changing it right now; look again next pass.
            let Ok(_ops) = entry.ops.try_write() else {
                continue;
            };
            if entry.status().state != InstanceState::Running
                || self.runtime.is_running(&entry.spec, &entry.paths).await
            {
                continue;
            }
            let attempt = {
                let mut s = entry.status();
                if s.running_since
                    .is_some_and(|t| t.elapsed() >= RESTART_BUDGET_RESET)
                {
                    s.auto_restarts = 0;
                }
                s.auto_restarts += 1;
                s.auto_restarts
            };
            let id = &entry.spec.instance_id;
            if attempt > MAX_AUTO_RESTARTS {
                tracing::warn!(instance = %id, "instance died; restart budget used up");
                let msg = format!(
                    "processes exited unexpectedly; gave up after {MAX_AUTO_RESTARTS} restarts"
                );
                self.settle(&entry, InstanceState::Failed, &msg).await;
                continue;
            }
            tracing::warn!(instance = %id, attempt, "instance died; restarting");
            self.settle(
                &entry,
                InstanceState::Failed,
                "processes exited unexpectedly; restarting",
            )
            .await;
            if let Err(e) = self.stop_processes(&entry.spec, &entry.paths).await {
                self.fail(&entry, "cleanup before restart failed", e).await;
                continue;
            }
            let _ = self.do_start(&entry).await;
        }
    }
}

pub(super) async fn watch(manager: Weak<InstanceManager>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(m) = manager.upgrade() else { return };
        if m.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        m.watch_once().await;
    }
}
