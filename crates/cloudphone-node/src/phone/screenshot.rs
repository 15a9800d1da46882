//! A PNG of an instance's screen at its native size, taken from the same place the stream
//! captures it (`ximagesrc` on the instance's display, the test pattern) through GStreamer's
//! `pngenc`. An Android device takes its own (`Runtime::screenshot`: `adb exec-out screencap
//! -p`).

use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::runtime::CaptureSource;

/// How long one screenshot may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A screenshot: the PNG and the screen's size.
#[derive(Debug)]
pub(crate) struct Shot {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Takes a screenshot of `source` (blocking; run it off the async threads).
pub(crate) fn take(source: &CaptureSource) -> Result<Shot, String> {
    match source {
        CaptureSource::X11 {
            display,
            width,
            height,
        } => {
            // The pointer is left out: a screenshot shows what the phone drew.
            let src = format!(
                "ximagesrc display-name={display} use-damage=false show-pointer=false num-buffers=1"
            );
            gst_png(&src, *width, *height)
        }
        CaptureSource::TestPattern { width, height } => gst_png(
            &format!("videotestsrc num-buffers=1 ! video/x-raw,width={width},height={height}"),
            *width,
            *height,
        ),
        // The device takes its own (`Runtime::screenshot`).
        CaptureSource::Adb { .. } => Err("no capture for an adb source".to_owned()),
    }
}

/// The screen size of a capture source.
pub(crate) fn size_of(source: &CaptureSource) -> (u32, u32) {
    match source {
        CaptureSource::X11 { width, height, .. }
        | CaptureSource::TestPattern { width, height }
        | CaptureSource::Adb { width, height, .. } => (*width, *height),
    }
}

/// Runs `<src> ! videoconvert ! pngenc ! appsink` for one frame.
fn gst_png(src: &str, width: u32, height: u32) -> Result<Shot, String> {
    crate::streaming::pipeline::init().map_err(|e| e.to_string())?;
    let description = format!("{src} ! videoconvert ! pngenc snapshot=true ! appsink name=sink");
    let pipeline = gst::parse::launch(&description)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let guard = Stopper(pipeline.clone());
    let sink = pipeline
        .by_name("sink")
        .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
        .ok_or("no appsink")?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let sample = sink
        .try_pull_sample(gst::ClockTime::from_mseconds(TIMEOUT.as_millis() as u64))
        .ok_or_else(|| {
            let error = pipeline.bus().and_then(|bus| {
                bus.pop_filtered(&[gst::MessageType::Error])
                    .map(|m| match m.view() {
                        gst::MessageView::Error(e) => e.error().to_string(),
                        _ => String::new(),
                    })
            });
            error.unwrap_or_else(|| "no frame in time".to_owned())
        })?;
    let buffer = sample.buffer().ok_or("empty sample")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    let png = map.as_slice().to_vec();
    drop(map);
    drop(guard);
    Ok(Shot { png, width, height })
}

/// Sets the pipeline to `Null` however the screenshot ends.
struct Stopper(gst::Pipeline);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}
