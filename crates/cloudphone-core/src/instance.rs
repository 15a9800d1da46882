//! Control's view of an instance: its state, the status codes the REST API derives from that
//! state, and the one rule an instance id follows.
//!
//! A node knows the states of [`InstanceState`]; control knows more, because it also tracks
//! instances that are on no node (backed up, queued for restore, failed to restore) or not yet
//! confirmed by one (creating). [`ControlState`] is that closed set. Control parses it from its
//! database and prints it back there only; everything in between is this enum, and every rule
//! that depends on the state is a pure function here, tested through one table.

use std::fmt;
use std::str::FromStr;

use crate::lifecycle::InstanceState;

/// Longest instance id.
pub const MAX_INSTANCE_ID_LEN: usize = 32;

/// An instance id that passed the one rule every id follows: 1..=32 characters of
/// `[A-Za-z0-9_-]`. The rule keeps ids usable as path components (archives, state dirs) and in
/// logs and commands without quoting; control mints 8 alphanumerics, so every real id fits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

/// Why a string is not an instance id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an instance id has 1..={MAX_INSTANCE_ID_LEN} characters of [A-Za-z0-9_-]")]
pub struct InvalidInstanceId;

impl InstanceId {
    /// Checks `id` against the rule.
    pub fn parse(id: &str) -> Result<Self, InvalidInstanceId> {
        let ok = (1..=MAX_INSTANCE_ID_LEN).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(Self(id.to_string()))
        } else {
            Err(InvalidInstanceId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for InstanceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Where an instance is, as control tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlState {
    /// Ordered and placed; its node has not confirmed it yet.
    Creating,
    /// A state its node reported (or control set while a node operation is in flight).
    Node(InstanceState),
    /// Its data is in an archive and it is on no node.
    BackedUp,
    /// Backed up and waiting in the prepare queue for a slot.
    Queued,
    /// The last backup failed; the instance is still on its node.
    BackupFailed,
    /// A restore failed; the node removed it again, so it is on no node.
    RestoreFailed,
    /// Its node reported a state this control does not know (a newer node).
    Unknown,
}

/// Every state, for tables and for building SQL lists.
pub const ALL_STATES: [ControlState; 13] = [
    ControlState::Creating,
    ControlState::Node(InstanceState::Stopped),
    ControlState::Node(InstanceState::Starting),
    ControlState::Node(InstanceState::Running),
    ControlState::Node(InstanceState::Resetting),
    ControlState::Node(InstanceState::Failed),
    ControlState::Node(InstanceState::BackingUp),
    ControlState::Node(InstanceState::Restoring),
    ControlState::BackedUp,
    ControlState::Queued,
    ControlState::BackupFailed,
    ControlState::RestoreFailed,
    ControlState::Unknown,
];

impl ControlState {
    pub const RUNNING: Self = Self::Node(InstanceState::Running);
    pub const STOPPED: Self = Self::Node(InstanceState::Stopped);
    pub const FAILED: Self = Self::Node(InstanceState::Failed);
    pub const BACKING_UP: Self = Self::Node(InstanceState::BackingUp);
    pub const RESTORING: Self = Self::Node(InstanceState::Restoring);

    /// Snake-case name, as stored and logged. Node states keep the node's names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Node(state) => state.as_str(),
            Self::BackedUp => "backed_up",
            Self::Queued => "queued",
            Self::BackupFailed => "backup_failed",
            Self::RestoreFailed => "restore_failed",
            Self::Unknown => "unknown",
        }
    }
}

impl From<InstanceState> for ControlState {
    fn from(state: InstanceState) -> Self {
        Self::Node(state)
    }
}

display_as_str!(ControlState);

/// A stored state name that is not one of [`ALL_STATES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instance state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for ControlState {
    type Err = UnknownState;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .into_iter()
            .find(|state| state.as_str() == name)
            .ok_or_else(|| UnknownState(name.to_string()))
    }
}

/// ListInstances' `running_status`: 0 unknown, 1 stopped, 2 running, 3 going offline,
/// 4 starting, 5 shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningStatus {
    Unknown = 0,
    Stopped = 1,
    Running = 2,
    GoingOffline = 3,
    Starting = 4,
    ShutDown = 5,
}

/// BatchQueryStatus `status` (table 4-34).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneStatus {
    Idle = 0,
    Restoring = 1,
    DataLoaded = 2,
    Streaming = 3,
    BackingUp = 4,
    BackupFailed = 5,
    RestoreFailed = 6,
}

/// BatchPrepareInstances' per-instance `status` (table 4-101).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareStatus {
    Ready = 0,
    Restoring = 1,
    Creating = 2,
    BackingUp = 3,
    Resetting = 4,
    Starting = 5,
    Unavailable = 6,
}

/// ShowProgress `status` (table 4-107); `Queued` also has a place in the queue to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStatus {
    Failed = -1,
    Ready = 0,
    Queued = 1,
    Loading = 2,
    BackingUp = 3,
}

/// What BatchBackupInstances does with an instance in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupPlan {
    /// Archived already, or on its way: a repeated call changes nothing.
    Skip,
    /// Back it up (its node must be up).
    Start,
    /// It cannot be backed up in this state.
    Refuse,
}

/// True while the instance's data lives on a node rather than only in an archive.
fn on_node(state: ControlState) -> bool {
    !matches!(
        state,
        ControlState::BackedUp | ControlState::Queued | ControlState::RestoreFailed
    )
}

/// Whether the instance counts against its node's capacity. Backed-up and queued instances,
/// and failed restores (which the node removed again), live in an archive: they hold no slot.
pub fn holds_slot(state: ControlState) -> bool {
    on_node(state)
}

/// Whether a state a node reports may replace `state`. An instance on no node is control's to
/// track: a late report (reports and RPC answers are not ordered) must not bring it back.
pub fn node_may_overwrite(state: ControlState) -> bool {
    on_node(state)
}

/// Whether BatchPrepareInstances queues the instance for restoring (one still backing up is
/// queued for when its backup ends).
pub fn may_prepare(state: ControlState) -> bool {
    matches!(
        state,
        ControlState::BackedUp
            | ControlState::RestoreFailed
            | ControlState::Queued
            | ControlState::Node(InstanceState::BackingUp)
    )
}

/// ListInstances' `running_status`. An archived instance is stopped wherever its last node is;
/// any other instance on a node that is down is unknown.
pub fn running_status(state: ControlState, node_up: bool) -> RunningStatus {
    use InstanceState as N;
    if !on_node(state) {
        return RunningStatus::Stopped;
    }
    if !node_up {
        return RunningStatus::Unknown;
    }
    match state {
        ControlState::Node(N::Running) => RunningStatus::Running,
        ControlState::Node(N::Stopped) => RunningStatus::Stopped,
        ControlState::Creating | ControlState::Node(N::Starting | N::Resetting | N::Restoring) => {
            RunningStatus::Starting
        }
        ControlState::Node(N::BackingUp) => RunningStatus::GoingOffline,
        ControlState::Node(N::Failed) => RunningStatus::ShutDown,
        _ => RunningStatus::Unknown,
    }
}

/// BatchQueryStatus' `status`. Streaming is a property of sessions, not of the state: a
/// running instance is streaming (3) while its node has a viewer on it (`viewed`).
pub fn phone_status(state: ControlState, viewed: bool) -> PhoneStatus {
    use InstanceState as N;
    match state {
        ControlState::Node(N::Running) if viewed => PhoneStatus::Streaming,
        ControlState::Node(N::Restoring) => PhoneStatus::Restoring,
        ControlState::Node(N::BackingUp) => PhoneStatus::BackingUp,
        ControlState::BackupFailed => PhoneStatus::BackupFailed,
        ControlState::RestoreFailed => PhoneStatus::RestoreFailed,
        ControlState::Creating | ControlState::Node(N::Running | N::Starting | N::Resetting) => {
            PhoneStatus::DataLoaded
        }
        _ => PhoneStatus::Idle,
    }
}

/// BatchPrepareInstances' `status` for an instance on a node that is up or not.
pub fn prepare_status(state: ControlState, node_up: bool) -> PrepareStatus {
    use InstanceState as N;
    match state {
        ControlState::Node(N::Running) if node_up => PrepareStatus::Ready,
        ControlState::BackedUp | ControlState::Queued | ControlState::Node(N::Restoring) => {
            PrepareStatus::Restoring
        }
        ControlState::Creating => PrepareStatus::Creating,
        ControlState::Node(N::BackingUp) => PrepareStatus::BackingUp,
        ControlState::Node(N::Resetting) => PrepareStatus::Resetting,
        ControlState::Node(N::Starting) => PrepareStatus::Starting,
        // Stopped, failed, a failed backup or restore, or its host down.
        _ => PrepareStatus::Unavailable,
    }
}

/// ShowProgress' `status` for an instance on a node that is up or not.
pub fn progress_status(state: ControlState, node_up: bool) -> ProgressStatus {
    use InstanceState as N;
    match state {
        ControlState::Queued => ProgressStatus::Queued,
        ControlState::Node(N::BackingUp) => ProgressStatus::BackingUp,
        ControlState::Node(N::Running) if node_up => ProgressStatus::Ready,
        ControlState::Node(N::Failed)
        | ControlState::BackupFailed
        | ControlState::RestoreFailed => ProgressStatus::Failed,
        // Restoring, starting, backed up but not prepared, or its host offline.
        _ => ProgressStatus::Loading,
    }
}

/// What BatchBackupInstances does with an instance in `state`.
pub fn backup_plan(state: ControlState) -> BackupPlan {
    use InstanceState as N;
    match state {
        ControlState::BackedUp | ControlState::Queued | ControlState::Node(N::BackingUp) => {
            BackupPlan::Skip
        }
        ControlState::Node(N::Running | N::Stopped) | ControlState::BackupFailed => {
            BackupPlan::Start
        }
        _ => BackupPlan::Refuse,
    }
}

/// A tenant operation on one instance whose outcome depends on the instance's state: what
/// [`plan`] decides for control's service layer, so every operation refuses a state the same
/// way and with a documented code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantOp {
    /// BatchReset: wipe the phone's data and start it fresh.
    Reset,
    /// UnassignInstance: unbind the user and wipe the data ("调用后会清除用户云机使用数据").
    Unassign,
    /// BatchRebootInstance.
    Reboot,
    /// GetDeviceToken: a viewer may stream the phone.
    DeviceToken,
    /// StopInstancesStreaming / ReleaseInstancesSession: end what streams.
    EndSessions,
}

/// Where an allowed operation acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Ask the instance's node (it is up and has the instance).
    OnNode,
    /// The phone lives only in its archive: act on the archive (a wipe deletes it, so the
    /// phone comes back fresh when it is prepared).
    Archive,
    /// Nothing to do: the answer is success (no node streams an archived phone).
    Nothing,
}

/// Why an operation is refused in a state; each is one documented code (seed 001, 6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `KOOPHONE.API.2005`: the phone is on its way back from its archive (backed up and not
    /// yet on a host, queued, or being restored); prepare it and wait.
    BeingRestored,
    /// `KOOPHONE.API.2006`: its data is being archived.
    BeingBackedUp,
    /// `KOOPHONE.API.62010`: the phone is not in a state to do this (its host is down, it is
    /// being created, started or reset, or it failed).
    Abnormal,
    /// `KOOPHONE.API.5005`: BatchRebootInstance of an instance that is not running.
    NotRunning,
}

/// What `op` does with an instance in `state` whose node is up (`node_up`) or not: where it
/// acts, or the refusal. Pure, so the rules read as one table (see the tests).
pub fn plan(op: TenantOp, state: ControlState, node_up: bool) -> Result<Plan, Refusal> {
    use InstanceState as N;
    let archived = !on_node(state);
    match op {
        // A wipe must reach the data wherever it is: on a host that is up, or in the archive.
        // Anything in flight would race the wipe, and a host that is down cannot wipe: the
        // call fails rather than reporting a wipe that did not happen.
        TenantOp::Reset | TenantOp::Unassign => match state {
            _ if archived => Ok(Plan::Archive),
            ControlState::Node(N::BackingUp) => Err(Refusal::BeingBackedUp),
            ControlState::Node(N::Restoring) => Err(Refusal::BeingRestored),
            _ if !node_up => Err(Refusal::Abnormal),
            ControlState::Node(N::Running | N::Stopped | N::Failed)
            | ControlState::BackupFailed => Ok(Plan::OnNode),
            _ => Err(Refusal::Abnormal),
        },
        TenantOp::Reboot => match state {
            ControlState::Node(N::Running) if node_up => Ok(Plan::OnNode),
            _ => Err(Refusal::NotRunning),
        },
        // Backups and restores are control's own doing, so those states are certain; any
        // other state of a phone on a host may be a report behind (a late "starting" after
        // control recorded "running"), so the node decides: a viewer's hello is refused
        // `not_running` until the phone runs.
        TenantOp::DeviceToken => match state {
            ControlState::Node(N::BackingUp) => Err(Refusal::BeingBackedUp),
            ControlState::BackedUp | ControlState::Queued | ControlState::Node(N::Restoring) => {
                Err(Refusal::BeingRestored)
            }
            ControlState::RestoreFailed => Err(Refusal::Abnormal),
            _ if node_up => Ok(Plan::OnNode),
            _ => Err(Refusal::Abnormal),
        },
        TenantOp::EndSessions if archived || !node_up => Ok(Plan::Nothing),
        TenantOp::EndSessions => Ok(Plan::OnNode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackupPlan as B;
    use PhoneStatus as P;
    use PrepareStatus as Pr;
    use ProgressStatus as G;
    use RunningStatus as R;

    /// One row per state: what every rule answers, with the node up and down.
    struct Row {
        name: &'static str,
        running: (R, R),
        phone: P,
        prepare: (Pr, Pr),
        progress: (G, G),
        holds_slot: bool,
        may_prepare: bool,
        backup: B,
    }

    /// Checks every rule for one state against its expected row, naming the state on failure.
    fn check(state: ControlState, row: Row) {
        let s = state;
        assert_eq!(s.as_str(), row.name);
        assert_eq!(row.name.parse::<ControlState>(), Ok(s), "{s}");
        assert_eq!(
            (running_status(s, true), running_status(s, false)),
            row.running,
            "{s} running_status"
        );
        assert_eq!(phone_status(s, false), row.phone, "{s} phone_status");
        let viewed = if s == ControlState::RUNNING {
            P::Streaming
        } else {
            row.phone
        };
        assert_eq!(
            phone_status(s, true),
            viewed,
            "{s} phone_status while viewed"
        );
        assert_eq!(
            (prepare_status(s, true), prepare_status(s, false)),
            row.prepare,
            "{s} prepare_status"
        );
        assert_eq!(
            (progress_status(s, true), progress_status(s, false)),
            row.progress,
            "{s} progress_status"
        );
        assert_eq!(holds_slot(s), row.holds_slot, "{s} holds_slot");
        assert_eq!(
            node_may_overwrite(s),
            row.holds_slot,
            "{s} node_may_overwrite"
        );
        assert_eq!(may_prepare(s), row.may_prepare, "{s} may_prepare");
        assert_eq!(backup_plan(s), row.backup, "{s} backup_plan");
    }

    #[test]
    fn every_state_against_every_rule() {
        use ControlState as C;
        use InstanceState as N;
        #[rustfmt::skip]
        let table = [
            (C::Creating, Row { name: "creating", running: (R::Starting, R::Unknown), phone: P::DataLoaded, prepare: (Pr::Creating, Pr::Creating), progress: (G::Loading, G::Loading), holds_slot: true, may_prepare: false, backup: B::Refuse }),
            (C::Node(N::Stopped), Row { name: "stopped", running: (R::Stopped, R::Unknown), phone: P::Idle, prepare: (Pr::Unavailable, Pr::Unavailable), progress: (G::Loading, G::Loading), holds_slot: true, may_prepare: false, backup: B::Start }),
            (C::Node(N::Starting), Row { name: "starting", running: (R::Starting, R::Unknown), phone: P::DataLoaded, prepare: (Pr::Starting, Pr::Starting), progress: (G::Loading, G::Loading), holds_slot: true, may_prepare: false, backup: B::Refuse }),
            (C::Node(N::Running), Row { name: "running", running: (R::Running, R::Unknown), phone: P::DataLoaded, prepare: (Pr::Ready, Pr::Unavailable), progress: (G::Ready, G::Loading), holds_slot: true, may_prepare: false, backup: B::Start }),
            (C::Node(N::Resetting), Row { name: "resetting", running: (R::Starting, R::Unknown), phone: P::DataLoaded, prepare: (Pr::Resetting, Pr::Resetting), progress: (G::Loading, G::Loading), holds_slot: true, may_prepare: false, backup: B::Refuse }),
            (C::Node(N::Failed), Row { name: "failed", running: (R::ShutDown, R::Unknown), phone: P::Idle, prepare: (Pr::Unavailable, Pr::Unavailable), progress: (G::Failed, G::Failed), holds_slot: true, may_prepare: false, backup: B::Refuse }),
            (C::Node(N::BackingUp), Row { name: "backing_up", running: (R::GoingOffline, R::Unknown), phone: P::BackingUp, prepare: (Pr::BackingUp, Pr::BackingUp), progress: (G::BackingUp, G::BackingUp), holds_slot: true, may_prepare: true, backup: B::Skip }),
            (C::Node(N::Restoring), Row { name: "restoring", running: (R::Starting, R::Unknown), phone: P::Restoring, prepare: (Pr::Restoring, Pr::Restoring), progress: (G::Loading, G::Loading), holds_slot: true, may_prepare: false, backup: B::Refuse }),
            (C::BackedUp, Row { name: "backed_up", running: (R::Stopped, R::Stopped), phone: P::Idle, prepare: (Pr::Restoring, Pr::Restoring), progress: (G::Loading, G::Loading), holds_slot: false, may_prepare: true, backup: B::Skip }),
            (C::Queued, Row { name: "queued", running: (R::Stopped, R::Stopped), phone: P::Idle, prepare: (Pr::Restoring, Pr::Restoring), progress: (G::Queued, G::Queued), holds_slot: false, may_prepare: true, backup: B::Skip }),
            (C::BackupFailed, Row { name: "backup_failed", running: (R::Unknown, R::Unknown), phone: P::BackupFailed, prepare: (Pr::Unavailable, Pr::Unavailable), progress: (G::Failed, G::Failed), holds_slot: true, may_prepare: false, backup: B::Start }),
            (C::RestoreFailed, Row { name: "restore_failed", running: (R::Stopped, R::Stopped), phone: P::RestoreFailed, prepare: (Pr::Unavailable, Pr::Unavailable), progress: (G::Failed, G::Failed), holds_slot: false, may_prepare: true, backup: B::Refuse }),
            (C::Unknown, Row { name: "unknown", running: (R::Unknown, R::Unknown), phone: P::Idle, prepare: (Pr::Unavailable, Pr::Unavailable), progress: (G::Loading, G::Loading), holds_slot: true, may_prepare: false, backup: B::Refuse }),
        ];
        assert_eq!(table.len(), ALL_STATES.len(), "a state without a row");
        for (state, row) in table {
            check(state, row);
        }
    }

    /// Every state, host up and down, against every state-dependent tenant operation:
    /// (wipe = Reset and Unassign, reboot, device token, end sessions).
    #[test]
    fn tenant_operations_by_state() {
        use ControlState as C;
        use InstanceState as N;
        use Plan::{Archive, Nothing, OnNode};
        use Refusal::{Abnormal as Ab, BeingBackedUp as Bu, BeingRestored as Br, NotRunning as Nr};
        type Answer = Result<Plan, Refusal>;
        // (state, host up, wipe, reboot, device token, end sessions)
        #[rustfmt::skip]
        let table: [(C, bool, Answer, Answer, Answer, Answer); 26] = [
            (C::Creating, true, Err(Ab), Err(Nr), Ok(OnNode), Ok(OnNode)),
            (C::Creating, false, Err(Ab), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::Node(N::Stopped), true, Ok(OnNode), Err(Nr), Ok(OnNode), Ok(OnNode)),
            (C::Node(N::Stopped), false, Err(Ab), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::Node(N::Starting), true, Err(Ab), Err(Nr), Ok(OnNode), Ok(OnNode)),
            (C::Node(N::Starting), false, Err(Ab), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::Node(N::Running), true, Ok(OnNode), Ok(OnNode), Ok(OnNode), Ok(OnNode)),
            (C::Node(N::Running), false, Err(Ab), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::Node(N::Resetting), true, Err(Ab), Err(Nr), Ok(OnNode), Ok(OnNode)),
            (C::Node(N::Resetting), false, Err(Ab), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::Node(N::Failed), true, Ok(OnNode), Err(Nr), Ok(OnNode), Ok(OnNode)),
            (C::Node(N::Failed), false, Err(Ab), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::Node(N::BackingUp), true, Err(Bu), Err(Nr), Err(Bu), Ok(OnNode)),
            (C::Node(N::BackingUp), false, Err(Bu), Err(Nr), Err(Bu), Ok(Nothing)),
            (C::Node(N::Restoring), true, Err(Br), Err(Nr), Err(Br), Ok(OnNode)),
            (C::Node(N::Restoring), false, Err(Br), Err(Nr), Err(Br), Ok(Nothing)),
            (C::BackedUp, true, Ok(Archive), Err(Nr), Err(Br), Ok(Nothing)),
            (C::BackedUp, false, Ok(Archive), Err(Nr), Err(Br), Ok(Nothing)),
            (C::Queued, true, Ok(Archive), Err(Nr), Err(Br), Ok(Nothing)),
            (C::Queued, false, Ok(Archive), Err(Nr), Err(Br), Ok(Nothing)),
            (C::BackupFailed, true, Ok(OnNode), Err(Nr), Ok(OnNode), Ok(OnNode)),
            (C::BackupFailed, false, Err(Ab), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::RestoreFailed, true, Ok(Archive), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::RestoreFailed, false, Ok(Archive), Err(Nr), Err(Ab), Ok(Nothing)),
            (C::Unknown, true, Err(Ab), Err(Nr), Ok(OnNode), Ok(OnNode)),
            (C::Unknown, false, Err(Ab), Err(Nr), Err(Ab), Ok(Nothing)),
        ];
        assert_eq!(
            table.len(),
            ALL_STATES.len() * 2,
            "a state without its rows"
        );
        for (s, up, wipe, reboot, token, end) in table {
            let got = |op| plan(op, s, up);
            assert_eq!(got(TenantOp::Reset), wipe, "{s} up={up} reset");
            assert_eq!(got(TenantOp::Unassign), wipe, "{s} up={up} unassign");
            assert_eq!(got(TenantOp::Reboot), reboot, "{s} up={up} reboot");
            assert_eq!(
                got(TenantOp::DeviceToken),
                token,
                "{s} up={up} device token"
            );
            assert_eq!(got(TenantOp::EndSessions), end, "{s} up={up} end sessions");
        }
    }

    #[test]
    fn names_are_unique_and_unknown_names_are_refused() {
        let mut names: Vec<&str> = ALL_STATES.iter().map(|s| s.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL_STATES.len());
        assert_eq!(
            "streaming".parse::<ControlState>(),
            Err(UnknownState("streaming".into()))
        );
    }

    #[test]
    fn instance_ids_follow_one_rule() {
        for good in ["11J6QVu5", "a", "seed-instance-1", "x_y", &"a".repeat(32)] {
            assert_eq!(
                InstanceId::parse(good).map(|id| id.to_string()),
                Ok(good.to_string())
            );
        }
        for bad in ["", "../etc", "a b", "a.b", "é", &"a".repeat(33)] {
            assert_eq!(InstanceId::parse(bad), Err(InvalidInstanceId), "{bad:?}");
        }
    }
}
