//! The tone button's sound: a short sine played into the instance's PulseAudio (the node sets
//! `PULSE_SERVER` for every app it launches). The PCM is made here and handed to `pacat`
//! (pulseaudio-utils); where that is missing, `gst-launch-1.0`'s `audiotestsrc ! pulsesink`
//! plays the same tone. Both are in the packages the demo already installs, and neither needs
//! a sound library linked into the app.

use std::io::Write;
use std::process::{Child, Command, Stdio};

/// The tone's pitch: A5, well inside Opus's band and easy to tell from the 660 Hz test tones.
pub(crate) const TONE_HZ: u32 = 880;
/// How long it plays.
pub(crate) const TONE_MS: u32 = 1200;
const RATE: u32 = 48_000;
/// Fade in and out, so the tone starts and stops without a click.
const FADE_MS: u32 = 10;

/// Starts playing the tone; the child exits when it is done.
pub(crate) fn play() -> std::io::Result<Child> {
    match play_with_pacat() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => play_with_gstreamer(),
        other => other,
    }
}

fn play_with_pacat() -> std::io::Result<Child> {
    let mut child = Command::new("pacat")
        .args([
            "--playback",
            "--raw",
            "--format=s16le",
            "--channels=1",
            "--latency-msec=40",
            "--client-name=cloudphone-demo-app",
        ])
        .arg(format!("--rate={RATE}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // The tone is larger than a pipe holds: write it from a thread so the UI never waits.
        // pacat drains what it got and exits when its stdin closes.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&pcm(TONE_HZ, TONE_MS));
        });
    }
    Ok(child)
}

fn play_with_gstreamer() -> std::io::Result<Child> {
    // 480-sample buffers at 48 kHz: 10 ms each.
    let buffers = TONE_MS / 10;
    Command::new("gst-launch-1.0")
        .arg("-q")
        .args(
            format!(
                "audiotestsrc wave=sine freq={TONE_HZ} volume=0.5 samplesperbuffer=480 num-buffers={buffers} \
                 ! audio/x-raw,rate={RATE},channels=1 ! pulsesink"
            )
            .split_whitespace(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
}

/// `ms` of a sine at `hz`, half of full scale, signed 16-bit little-endian mono at [`RATE`].
fn pcm(hz: u32, ms: u32) -> Vec<u8> {
    let n = (RATE * ms / 1000) as usize;
    let fade = (RATE * FADE_MS / 1000) as usize;
    (0..n)
        .flat_map(|i| {
            let envelope = (i.min(n - 1 - i) as f64 / fade as f64).min(1.0);
            let phase = 2.0 * std::f64::consts::PI * f64::from(hz) * i as f64 / f64::from(RATE);
            let sample = (phase.sin() * envelope * 16_000.0) as i16;
            sample.to_le_bytes()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pcm_is_the_tone_with_faded_ends() {
        let bytes = pcm(TONE_HZ, 100);
        let samples: Vec<i16> = bytes
            .chunks(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(samples.len(), 4800);
        assert_eq!(samples[0], 0);
        assert!(samples[4799].abs() < 100);
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((15_000..=16_000).contains(&peak), "{peak}");
        // 880 Hz for 0.1 s: 88 rising zero crossings, give or take the ends.
        let rising = samples.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!((87..=89).contains(&rising), "{rising}");
    }
}
