//! Helpers shared by the node's test modules; each module uses a part of them.

pub(crate) mod pipeline;
pub(crate) mod streaming;
pub(crate) mod x11;

/// One test per codec for a scenario that takes the codec as its argument: `per_codec!(scenario(
/// Codec::H264 => h264_test_name, Codec::H265 => h265_test_name))`. Each codec stays its own
/// test (its own name, its own failure, run in parallel).
macro_rules! per_codec {
    ($scenario:ident($($codec:expr => $test:ident),+ $(,)?)) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            $scenario($codec).await;
        }
    )+};
}
pub(crate) use per_codec;

/// The second whitespace-separated word of a command's output as a number (`stopped 512 …`,
/// `df -m`'s size column); panics with the whole output when it is not one.
pub(crate) fn second_number(stdout: &str) -> u64 {
    stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number as the second word of {stdout:?}"))
}
