//! A viewer's role on a phone: the owner drives it, an observer only watches. One type for the
//! concept on every wire (GetDeviceToken's optional body, the node API's grant, the signaling
//! `ready`), spelled `owner` / `observer`.

use std::fmt;

/// Most viewers one phone streams to at once, owners and observers together (issue 16:
/// Alibaba's "collaborative" mode allows 10). Each viewer costs the node a peer connection and
/// a share of its encoder's output; past this a phone is a broadcast, which the live edge is for.
pub const MAX_VIEWERS_PER_PHONE: usize = 10;

/// What a device token lets its viewer do.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and hears the phone and sends input: what every token was before roles existed,
    /// so it is the default wherever a role is not given.
    #[default]
    Owner,
    /// Sees and hears the phone; its input events are refused (and counted by the node).
    Observer,
}

/// A role spelled neither `owner` nor `observer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role must be \"owner\" or \"observer\", not {0:?}")]
pub struct UnknownRole(pub String);

impl Role {
    /// Parses the exact lowercase spelling, as the JSON extension documents it.
    pub fn parse(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "owner" => Ok(Role::Owner),
            "observer" => Ok(Role::Observer),
            other => Err(UnknownRole(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Observer => "observer",
        }
    }

    /// Whether this viewer's input events reach the phone.
    pub fn may_send_input(self) -> bool {
        self == Role::Owner
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_exactly_and_default_to_owner() {
        assert_eq!(Role::parse("owner"), Ok(Role::Owner));
        assert_eq!(Role::parse("observer"), Ok(Role::Observer));
        for bad in ["", "Owner", "OBSERVER", "admin", " owner"] {
            assert_eq!(Role::parse(bad), Err(UnknownRole(bad.into())), "{bad:?}");
        }
        assert_eq!(Role::default(), Role::Owner);
        assert!(Role::Owner.may_send_input());
        assert!(!Role::Observer.may_send_input());
        assert_eq!(
            serde_json::to_string(&Role::Observer).unwrap(),
            "\"observer\""
        );
    }
}
