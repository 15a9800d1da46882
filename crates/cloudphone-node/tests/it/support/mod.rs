//! Helpers shared by the node's test modules; each module uses a part of them.

pub(crate) mod pipeline;
pub(crate) mod streaming;
pub(crate) mod x11;

/// The second whitespace-separated word of a command's output as a number (`stopped 512 …`,
/// `df -m`'s size column); panics with the whole output when it is not one.
pub(crate) fn second_number(stdout: &str) -> u64 {
    stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number as the second word of {stdout:?}"))
}
