//! The node's side of one viewer's `input` data channel: input events in order to the runtime,
//! clipboard and screenshot requests, and what the node sends back on the same channel
//! (`ChannelEvent`: text copied in the phone, screenshot chunks). Protocol in
//! `docs/signaling.md` section 3.
//!
//! Who may do what: an owner everything; an observer may ask for screenshots (it sees the
//! screen anyway) but neither sends input nor reads or writes the clipboard: copied text is
//! often not on screen (a password, a code), and a view-only share must not show more than
//! the screen does.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cloudphone_signaling::{
    ChannelEvent, ChannelRequest, InputRefusal, NodeMessage, Role, SCREENSHOT_CHUNK_BYTES,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::peer_connection::RTCPeerConnection;

use crate::streaming::input::{self, ChannelMessage};
use crate::streaming::sessions::Sessions;

/// Input events queued per viewer before new ones are dropped.
const INPUT_QUEUE: usize = 256;
/// Screenshot requests queued per viewer; more are answered `screenshot_failed` at once.
const SCREENSHOT_QUEUE: usize = 2;
/// Bytes queued on the channel above which screenshot chunks wait: input and clipboard events
/// keep flowing instead of sitting behind a megabyte of PNG.
const MAX_BUFFERED: usize = 256 * 1024;

type Channel = watch::Receiver<Option<Arc<RTCDataChannel>>>;

/// One viewer's channel tasks; dropping it stops them.
pub(crate) struct ChannelTasks {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ChannelTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Serves the `input` channel `pc` will open for a viewer of `instance_id` with `role`;
/// `signaling` takes `input_refused` to the viewer's socket.
pub(crate) fn serve(
    pc: &RTCPeerConnection,
    sessions: &Arc<Sessions>,
    instance_id: String,
    role: Role,
    signaling: mpsc::UnboundedSender<NodeMessage>,
) -> ChannelTasks {
    // One ordered queue per viewer, so a touch's down/move/up stay in order.
    let (input_tx, mut input_rx) = mpsc::channel::<bytes::Bytes>(INPUT_QUEUE);
    let (channel_tx, channel) = watch::channel(None::<Arc<RTCDataChannel>>);
    pc.on_data_channel(Box::new(move |dc| {
        let input_tx = input_tx.clone();
        if dc.label() == "input" {
            let _ = channel_tx.send(Some(Arc::clone(&dc)));
        }
        Box::pin(async move {
            if dc.label() != "input" {
                return;
            }
            dc.on_message(Box::new(move |msg: DataChannelMessage| {
                // Full queue: the viewer sends faster than the instance takes input; drop.
                let _ = input_tx.try_send(msg.data);
                Box::pin(async {})
            }));
        })
    }));

    let (shots_tx, shots_rx) = mpsc::channel::<u32>(SCREENSHOT_QUEUE);
    let mut tasks = vec![tokio::spawn(screenshots(
        Arc::clone(sessions),
        instance_id.clone(),
        shots_rx,
        channel.clone(),
    ))];
    if role.may_send_input() {
        match sessions.manager().clipboard_changes(&instance_id) {
            Ok(changes) => tasks.push(tokio::spawn(clipboard(changes, channel.clone()))),
            Err(e) => tracing::debug!(instance = %instance_id, error = %e, "no clipboard events"),
        }
    }

    let manager = Arc::clone(sessions.manager());
    tasks.push(tokio::spawn(async move {
        let mut told = false;
        while let Some(bytes) = input_rx.recv().await {
            let message = input::parse_channel(&bytes);
            if let Ok(ChannelMessage::Request(ChannelRequest::Screenshot { id })) = message {
                if shots_tx.try_send(id).is_err() {
                    let failed = ChannelEvent::ScreenshotFailed {
                        id,
                        message: "busy: a screenshot is already being taken".to_owned(),
                    };
                    send_now(&channel, &failed).await;
                }
                continue;
            }
            if !role.may_send_input() {
                input::count_refused(InputRefusal::Observer);
                // Once per stream: the player learns why its input does nothing (it should
                // have disabled its controls on `ready`), without an answer per event.
                if !told {
                    told = true;
                    tracing::info!(instance = %instance_id, "an observer's input refused");
                    let _ = signaling.send(NodeMessage::InputRefused {
                        reason: InputRefusal::Observer,
                    });
                }
                continue;
            }
            match message {
                Ok(ChannelMessage::Input(event)) => {
                    if let Err(e) = manager.inject_input(&instance_id, &event).await {
                        tracing::debug!(instance = %instance_id, error = %e, "input not injected");
                    }
                }
                Ok(ChannelMessage::Request(ChannelRequest::Clipboard { text })) => {
                    if let Err(e) = manager.set_clipboard(&instance_id, &text).await {
                        tracing::debug!(instance = %instance_id, error = %e, "clipboard not set");
                    }
                }
                Ok(ChannelMessage::Request(ChannelRequest::Screenshot { .. })) => {}
                Err(e) => tracing::debug!(instance = %instance_id, error = %e, "input refused"),
            }
        }
    }));
    ChannelTasks { tasks }
}

/// The channel once the viewer has opened it.
async fn opened(channel: &mut Channel) -> Option<Arc<RTCDataChannel>> {
    channel.wait_for(Option::is_some).await.ok()?.clone()
}

async fn send(dc: &RTCDataChannel, event: &ChannelEvent) -> bool {
    match serde_json::to_string(event) {
        Ok(text) => dc.send_text(text).await.is_ok(),
        Err(_) => false,
    }
}

/// Sends `event` if the channel is open (a reply to something the viewer sent on it).
async fn send_now(channel: &Channel, event: &ChannelEvent) {
    let dc = channel.borrow().clone();
    if let Some(dc) = dc {
        send(&dc, event).await;
    }
}

/// Text the phone's apps copy → the viewer.
async fn clipboard(mut changes: broadcast::Receiver<crate::runtime::Copied>, mut channel: Channel) {
    loop {
        let copied = match changes.recv().await {
            Ok(c) => c,
            // Only the latest copy matters.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(dc) = opened(&mut channel).await else {
            return;
        };
        send(
            &dc,
            &ChannelEvent::Clipboard {
                text: copied.text,
                truncated: copied.truncated,
            },
        )
        .await;
    }
}

/// Takes the viewer's screenshots one at a time and sends each in chunks.
async fn screenshots(
    sessions: Arc<Sessions>,
    instance_id: String,
    mut requests: mpsc::Receiver<u32>,
    mut channel: Channel,
) {
    while let Some(id) = requests.recv().await {
        let Some(dc) = opened(&mut channel).await else {
            return;
        };
        let shot = match crate::phone::take_screenshot(&sessions, &instance_id).await {
            Ok(shot) => shot,
            Err(e) => {
                let failed = ChannelEvent::ScreenshotFailed {
                    id,
                    message: e.to_string(),
                };
                send(&dc, &failed).await;
                continue;
            }
        };
        let total = shot.png.len().div_ceil(SCREENSHOT_CHUNK_BYTES) as u32;
        for (seq, piece) in shot.png.chunks(SCREENSHOT_CHUNK_BYTES).enumerate() {
            while dc.buffered_amount().await > MAX_BUFFERED {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let chunk = ChannelEvent::ScreenshotChunk {
                id,
                seq: seq as u32,
                total,
                width: shot.width,
                height: shot.height,
                data: base64::engine::general_purpose::STANDARD.encode(piece),
            };
            if !send(&dc, &chunk).await {
                break;
            }
        }
    }
}
