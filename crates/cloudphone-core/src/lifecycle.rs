//! Instance lifecycle: the states an instance can be in and which operations each allows.
//!
//! Both control and node ask [`check`] before acting, so a request that cannot apply (a
//! command on a stopped phone, a start in the middle of a reset) is refused the same way
//! everywhere. Transitional states ([`InstanceState::Starting`], [`InstanceState::Resetting`],
//! …) are shown while an operation is in flight; while data is being rewritten (reset,
//! backup, restore) only `Delete` is accepted, because anything else would race the rewrite.

use serde::{Deserialize, Serialize};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Exists with its data, no processes.
    Stopped,
    /// Booting (first start, restart after a node restart, or a reboot).
    Starting,
    /// Up and streamable.
    Running,
    /// Being wiped back to a fresh image.
    Resetting,
    /// Something went wrong; the message on the instance says what. Can be started, reset
    /// or deleted.
    Failed,
    /// Its data is being copied out.
    BackingUp,
    /// Its data is being replaced from a backup.
    Restoring,
}

impl InstanceState {
    /// Snake-case name, as on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Resetting => "resetting",
            Self::Failed => "failed",
            Self::BackingUp => "backing_up",
            Self::Restoring => "restoring",
        }
    }

    /// True for the states an in-flight operation puts an instance in.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Resetting | Self::BackingUp | Self::Restoring
        )
    }

    /// True while the instance's data is being rewritten; only `Delete` may interrupt.
    pub fn is_rewriting_data(self) -> bool {
        matches!(self, Self::Resetting | Self::BackingUp | Self::Restoring)
    }
}

display_as_str!(InstanceState, Operation);

/// Something a user (or control) asks of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Start,
    Stop,
    Reboot,
    Reset,
    Delete,
    Backup,
    Restore,
    RunCommand,
    Stream,
}

impl Operation {
    /// Snake-case name, as on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Reboot => "reboot",
            Self::Reset => "reset",
            Self::Delete => "delete",
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::RunCommand => "run_command",
            Self::Stream => "stream",
        }
    }
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("cannot {op} an instance that is {state}")]
    NotAllowed { state: InstanceState, op: Operation },
}

/// Whether `op` may be applied to an instance currently in `state`.
///
/// Idempotent requests are allowed where they are harmless (`Start` on a running instance,
/// `Stop` on a stopped one); the caller turns them into no-ops.
pub fn check(state: InstanceState, op: Operation) -> Result<(), LifecycleError> {
    use InstanceState as S;
    use Operation as O;
    let allowed = match op {
        // Delete must always be possible: it is how a stuck instance is got rid of.
        O::Delete => true,
        _ if state.is_rewriting_data() => false,
        O::Start => matches!(state, S::Stopped | S::Failed | S::Running | S::Starting),
        O::Stop => matches!(state, S::Stopped | S::Failed | S::Running | S::Starting),
        O::Reboot => matches!(state, S::Running | S::Failed),
        O::Reset => matches!(state, S::Running | S::Stopped | S::Failed),
        // A backup of a half-booted or broken instance would be inconsistent.
        O::Backup => matches!(state, S::Running | S::Stopped),
        O::Restore => matches!(state, S::Running | S::Stopped | S::Failed),
        O::RunCommand | O::Stream => state == S::Running,
    };
    if allowed {
        Ok(())
    } else {
        Err(LifecycleError::NotAllowed { state, op })
    }
}

/// The state an instance shows while `op` is in flight, if `op` has one.
pub fn transitional(op: Operation) -> Option<InstanceState> {
    match op {
        Operation::Start | Operation::Reboot => Some(InstanceState::Starting),
        Operation::Reset => Some(InstanceState::Resetting),
        Operation::Backup => Some(InstanceState::BackingUp),
        Operation::Restore => Some(InstanceState::Restoring),
        Operation::Stop | Operation::Delete | Operation::RunCommand | Operation::Stream => None,
    }
}

/// The state an instance should settle in once `op` succeeded; also what a node restores
/// after it restarts. `None` means the operation does not change it (commands, streaming,
/// backups return to whatever the instance was) or the instance is gone (`Delete`).
pub fn desired_after(op: Operation) -> Option<InstanceState> {
    match op {
        Operation::Start | Operation::Reboot | Operation::Reset => Some(InstanceState::Running),
        Operation::Stop => Some(InstanceState::Stopped),
        Operation::Delete
        | Operation::Backup
        | Operation::Restore
        | Operation::RunCommand
        | Operation::Stream => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState as S;
    use Operation as O;

    const ALL_STATES: [S; 7] = [
        S::Stopped,
        S::Starting,
        S::Running,
        S::Resetting,
        S::Failed,
        S::BackingUp,
        S::Restoring,
    ];
    const ALL_OPS: [O; 9] = [
        O::Start,
        O::Stop,
        O::Reboot,
        O::Reset,
        O::Delete,
        O::Backup,
        O::Restore,
        O::RunCommand,
        O::Stream,
    ];

    /// The full allow-table, written out independently of `check`'s match so a change to
    /// either shows up as a failure naming the exact cell.
    fn expected(state: S, op: O) -> bool {
        let allowed: &[S] = match op {
            O::Start | O::Stop => &[S::Stopped, S::Starting, S::Running, S::Failed],
            O::Reboot => &[S::Running, S::Failed],
            O::Reset => &[S::Running, S::Stopped, S::Failed],
            O::Delete => &ALL_STATES,
            O::Backup => &[S::Running, S::Stopped],
            O::Restore => &[S::Running, S::Stopped, S::Failed],
            O::RunCommand | O::Stream => &[S::Running],
        };
        allowed.contains(&state)
    }

    #[test]
    fn check_matches_table_for_every_state_and_operation() {
        let mut mismatches = Vec::new();
        for state in ALL_STATES {
            for op in ALL_OPS {
                let got = check(state, op).is_ok();
                if got != expected(state, op) {
                    mismatches.push(format!("{state} + {op}: got allowed={got}"));
                }
            }
        }
        assert!(mismatches.is_empty(), "{mismatches:#?}");
    }

    #[test]
    fn named_rules() {
        // Per operation: states that allow it, states that refuse it.
        let cases: [(O, &[S], &[S]); 6] = [
            (O::RunCommand, &[S::Running], &[S::Stopped, S::Starting]),
            (
                O::Reset,
                &[S::Stopped, S::Failed, S::Running],
                &[S::Resetting],
            ),
            (O::Delete, &[S::Resetting, S::Restoring], &[]),
            (O::Stop, &[], &[S::BackingUp]),
            (O::Start, &[S::Running], &[S::Restoring]),
            (O::Stream, &[], &[S::Stopped]),
        ];
        for (op, allowed, refused) in cases {
            for &state in allowed {
                assert!(check(state, op).is_ok(), "{state} + {op} is allowed");
            }
            for &state in refused {
                assert!(check(state, op).is_err(), "{state} + {op} is refused");
            }
        }
    }

    #[test]
    fn only_delete_while_rewriting_data() {
        for state in [S::Resetting, S::BackingUp, S::Restoring] {
            for op in ALL_OPS {
                assert_eq!(check(state, op).is_ok(), op == O::Delete, "{state} + {op}");
            }
        }
    }

    #[test]
    fn error_names_state_and_operation() {
        let err = check(S::Stopped, O::RunCommand).unwrap_err();
        assert_eq!(
            err,
            LifecycleError::NotAllowed {
                state: S::Stopped,
                op: O::RunCommand
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot run_command an instance that is stopped"
        );
    }

    #[test]
    fn transitional_and_desired_states() {
        assert_eq!(transitional(O::Reset), Some(S::Resetting));
        assert_eq!(transitional(O::Reboot), Some(S::Starting));
        assert_eq!(transitional(O::RunCommand), None);
        assert_eq!(desired_after(O::Reset), Some(S::Running));
        assert_eq!(desired_after(O::Stop), Some(S::Stopped));
        assert_eq!(desired_after(O::Stream), None);
        for op in ALL_OPS {
            if let Some(t) = transitional(op) {
                assert!(t.is_transitional(), "{op} -> {t}");
            }
            if let Some(d) = desired_after(op) {
                assert!(!d.is_transitional(), "{op} settles in {d}");
            }
        }
    }

    #[test]
    fn serde_names_match_as_str() {
        for state in ALL_STATES {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<S>(&json).unwrap(), state);
        }
        for op in ALL_OPS {
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(json, format!("\"{}\"", op.as_str()));
        }
    }
}
