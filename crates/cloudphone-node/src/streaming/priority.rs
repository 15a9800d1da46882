//! Real-time scheduling for the encode pipelines' streaming threads: on a busy host the
//! phones' apps wait for the encoder, not the other way round.
//!
//! Every capture and encode thread is put under `SCHED_RR` at a low real-time priority when
//! GStreamer starts it (its `stream-status` *enter* message is posted from the new thread, so
//! a bus sync handler runs in it). Measured on a 2-core host (`benches/results/REPORT.md`),
//! 720P30 x264 encode p99 falls from ~2.5× its p50 under normal scheduling to ~1.2×. The
//! kernel's real-time throttling (`sched_rt_runtime_us`, 95 % by default) keeps a runaway
//! encoder from starving the rest of the host. Without the right (root, `CAP_SYS_NICE`, or
//! systemd's `LimitRTPRIO=`) the threads keep normal scheduling and a warning is logged once.

use std::sync::atomic::{AtomicBool, Ordering};

use gstreamer as gst;
use thread_priority::unix::{
    NormalThreadSchedulePolicy, RealtimeThreadSchedulePolicy, ThreadSchedulePolicy,
    set_thread_priority_and_policy, thread_native_id,
};
use thread_priority::{ThreadPriority, ThreadPriorityValue};

/// `SCHED_RR` priority of streaming threads by default: above every normally scheduled
/// thread, well below the kernel's interrupt threads (50).
pub const DEFAULT_REALTIME_PRIORITY: u8 = 10;

/// Puts the calling thread under `SCHED_RR` at `priority` (1–99).
pub(crate) fn elevate_current_thread(priority: u8) -> Result<(), String> {
    let value = ThreadPriorityValue::try_from(priority)?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::RoundRobin),
    )
    .map_err(|e| format!("{e:?}"))
}

/// Puts the calling thread back under normal scheduling at nice 0.
pub(crate) fn normalize_current_thread() -> Result<(), String> {
    // The crate maps 0–99 onto nice 19…−20; 48 is nice 0.
    let nice_zero = ThreadPriorityValue::try_from(48u8)?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(nice_zero),
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
    )
    .map_err(|e| format!("{e:?}"))
}

/// For a bus sync handler: when `msg` announces a streaming thread starting, elevates it (the
/// handler runs on that thread), or with `priority` 0 makes sure it runs normally (GStreamer
/// reuses pooled threads, which may have been elevated for another pipeline). `Some(true)`
/// when the thread now runs under `SCHED_RR`, `Some(false)` when it runs normally, `None` for
/// every other message.
pub fn elevate_entering_thread(msg: &gst::Message, priority: u8) -> Option<bool> {
    let gst::MessageView::StreamStatus(status) = msg.view() else {
        return None;
    };
    if status.get().0 != gst::StreamStatusType::Enter {
        return None;
    }
    if priority == 0 {
        if let Err(e) = normalize_current_thread() {
            tracing::debug!(error = %e, "resetting a streaming thread's scheduling failed");
        }
        return Some(false);
    }
    match elevate_current_thread(priority) {
        Ok(()) => Some(true),
        Err(e) => {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    priority,
                    error = %e,
                    "streaming threads keep normal scheduling: SCHED_RR is not permitted (run as \
                     root, or give the service LimitRTPRIO=); encode latency will vary with host load"
                );
            }
            Some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_priority_is_refused_without_touching_the_thread() {
        assert!(elevate_current_thread(100).is_err());
    }

    #[test]
    fn elevation_applies_to_the_calling_thread_only() {
        // Root may (as in CI); an unprivileged user without LimitRTPRIO may not.
        let root = nix::unistd::geteuid().is_root();
        let outcome = std::thread::spawn(|| {
            let r = elevate_current_thread(DEFAULT_REALTIME_PRIORITY);
            let policy = thread_priority::unix::thread_schedule_policy().ok();
            (r, policy)
        })
        .join()
        .expect("thread");
        if root {
            assert_eq!(outcome.0, Ok(()));
            assert_eq!(
                outcome.1,
                Some(ThreadSchedulePolicy::Realtime(
                    RealtimeThreadSchedulePolicy::RoundRobin
                ))
            );
        }
        if root {
            let back = std::thread::spawn(|| {
                elevate_current_thread(DEFAULT_REALTIME_PRIORITY).expect("elevate");
                normalize_current_thread().expect("normalize");
                thread_priority::unix::thread_schedule_policy().ok()
            })
            .join()
            .expect("thread");
            assert_eq!(
                back,
                Some(ThreadSchedulePolicy::Normal(
                    NormalThreadSchedulePolicy::Other
                ))
            );
        }
        assert_eq!(
            thread_priority::unix::thread_schedule_policy().ok(),
            Some(ThreadSchedulePolicy::Normal(
                thread_priority::unix::NormalThreadSchedulePolicy::Other
            )),
            "the test thread itself is untouched"
        );
    }
}
