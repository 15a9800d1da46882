//! Pure logic shared by control and node: state machines and decisions with time as an input.
//!
//! Nothing here does I/O, spawns tasks or reads the clock, so every rule is tested directly.
//!
//! # Layout
//! - [`lifecycle`]: an instance's states and which operations are allowed from each.
//! - [`instance`]: control's view of an instance's state, the status codes derived from it, and
//!   the instance id rule.
//! - [`liveness`]: when a node that stopped beating counts as down.
//! - [`scheduling`]: which node a new instance goes to.
//! - [`prepare`]: the FIFO queue of backed-up instances waiting for a slot to be restored.
//! - [`video`]: the SetVideoConfig matrix, its rules and profile selection.
//! - [`adaptation`]: the sender's bitrate controller under congestion.
//! - [`login_backoff`]: how long a user or address waits after wrong passwords.
//! - [`play_auth`]: signed live URLs (Alibaba `auth_key` Type A), signed by control, checked by the node.
//! - [`role`]: a viewer's role (owner or observer) and the viewer cap per phone.
#![forbid(unsafe_code)]

/// `Display` for enums that print as their `as_str()`, so each shows the one spelling it is
/// parsed from and stored as.
macro_rules! display_as_str {
    ($($ty:ty),+ $(,)?) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

pub mod adaptation;
pub mod instance;
pub mod lifecycle;
pub mod liveness;
pub mod login_backoff;
pub mod play_auth;
pub mod prepare;
pub mod role;
pub mod scheduling;
pub mod video;
