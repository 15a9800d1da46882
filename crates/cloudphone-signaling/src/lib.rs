//! Wire types of the viewer ↔ node signaling WebSocket (`/v1/signaling`) and of the `input`
//! data channel. Pure serde: the node and any Rust client share these; the browser player
//! speaks the same JSON (see `docs/signaling.md`).
//!
//! Every message is a JSON object with a `"type"` tag. Unknown fields are ignored so either
//! side may add fields without breaking the other; unknown `type`s are an error.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Longest text one `text` input message may carry, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Longest DOM `KeyboardEvent.code` accepted.
pub const MAX_KEY_CODE_CHARS: usize = 32;
/// Highest pointer id accepted (multi-touch with up to this many + 1 fingers).
pub const MAX_POINTER_ID: u32 = 9;

/// The viewer's role (`owner` / `observer`), as GetDeviceToken's optional body names it.
pub use cloudphone_core::role::Role;
/// The viewer's network, codec and definition are the video matrix's own types: one type per
/// concept, spelled the same (`WIFI`, `H264`, `720P`…) on every wire. `EncodingType` is the
/// seed's name for the codec (the `encoding_type` field).
pub use cloudphone_core::video::{Codec, Codec as EncodingType, Definition, NetworkType};

/// First message from the viewer: who it is and what it wants to see. `Debug` leaves the
/// device token out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub device_id: String,
    /// The device token GetDeviceToken returned; the node compares its SHA-256.
    pub device_token: String,
    pub network_type: NetworkType,
    pub encoding_type: EncodingType,
    pub definition: Definition,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Hello {{ device_id: {:?}, {:?} {:?} {:?}, .. }}",
            self.device_id, self.network_type, self.encoding_type, self.definition
        )
    }
}

/// One trickled ICE candidate, named like the browser's `RTCIceCandidateInit`. An empty
/// `candidate` means end of candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
}

/// Messages the viewer sends on the signaling socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    Hello(Hello),
    /// SDP offer: a recvonly video transceiver, optionally audio, and a data channel `input`.
    Offer {
        sdp: String,
    },
    Candidate(Candidate),
    /// Mid-session: switch this viewer's video to another definition (`540P`, `720P`,
    /// `1080P`: the names GetDeviceToken/SetVideoConfig use) on the same peer connection. The
    /// node answers `video` with the new [`VideoInfo`], or `definition_refused` and keeps the
    /// current one. `encoding_type`, when given, must be the stream's codec: a codec change
    /// needs a new offer/answer, so the node refuses it (reconnect with the new codec).
    /// Observers may switch too: it changes only their own view.
    Definition {
        definition: Definition,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encoding_type: Option<EncodingType>,
    },
}

/// An ICE server in the shape of the browser's `RTCIceServer`, so a player can pass the list
/// to `new RTCPeerConnection({iceServers})` unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What the node will send once the peer connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoInfo {
    pub codec: EncodingType,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

/// Why the node refused a hello. The socket closes after the `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed or unexpected message.
    BadRequest,
    /// No session is authorised for this device id.
    UnknownDevice,
    /// The token does not match the device's session.
    BadToken,
    /// The session's `expires_at` has passed.
    Expired,
    /// The instance is not running.
    NotRunning,
    /// The node is shutting down.
    Busy,
    /// The phone already streams to its most viewers (owners and observers together,
    /// `webrtc.max_viewers_per_instance`, 10 by default); one has to leave first.
    TooManyViewers,
    /// The node failed to start the stream.
    Internal,
}

/// Why the node ended a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByeReason {
    /// StopStreaming: the session stays valid, the viewer may reconnect.
    Stopped,
    /// ReleaseSession: the token is revoked.
    Released,
    /// The session's `expires_at` passed.
    Expired,
    /// The instance stopped or was deleted.
    InstanceGone,
    /// The encoder failed.
    MediaError,
    /// The node is shutting down.
    Shutdown,
    /// The peer connection failed (ICE/DTLS).
    PeerFailed,
}

/// Messages the node sends on the signaling socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NodeMessage {
    Ready {
        ice_servers: Vec<IceServer>,
        video: VideoInfo,
        /// What this viewer may do: an `observer`'s input is refused, so a player disables its
        /// controls. Absent (a node older than roles) reads as `owner`.
        #[serde(default)]
        role: Role,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Answer {
        sdp: String,
    },
    Candidate(Candidate),
    Bye {
        reason: ByeReason,
    },
    /// The viewer's input events are being refused (sent once per stream, at the first one;
    /// every refused event is counted on the node's `/metrics`). The stream carries on.
    #[serde(rename = "input_refused")]
    InputRefused {
        reason: InputRefusal,
    },
    /// The stream now carries `video` (after a `definition` request): same connection, same
    /// track; the first frame at the new size is a key frame that follows at once.
    Video {
        video: VideoInfo,
    },
    /// A `definition` request was refused; the stream carries on as it was.
    #[serde(rename = "definition_refused")]
    DefinitionRefused {
        definition: Definition,
        reason: DefinitionRefusal,
        message: String,
    },
}

/// Why the node refused a `definition` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionRefusal {
    /// The request named another codec: that needs renegotiation; reconnect instead.
    CodecChange,
    /// The encoder for the new definition did not start.
    Internal,
}

/// Why the node refuses a viewer's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRefusal {
    /// The viewer's device token is an observer's (view only).
    Observer,
}

/// Touch phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TouchAction {
    Down,
    Move,
    Up,
}

/// Keys every phone has outside the keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhoneKey {
    Back,
    Home,
    Recents,
    Menu,
    #[serde(rename = "volume_up")]
    VolumeUp,
    #[serde(rename = "volume_down")]
    VolumeDown,
    Power,
}

/// One message on the `input` data channel. Coordinates are normalised to the video frame:
/// 0 is the left/top edge, 1 the right/bottom edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum InputMessage {
    Touch {
        action: TouchAction,
        /// Finger number, 0..=[`MAX_POINTER_ID`].
        #[serde(default)]
        pointer_id: u32,
        x: f64,
        y: f64,
    },
    /// A DOM `KeyboardEvent.code` (e.g. `KeyA`, `Enter`), pressed or released.
    Key {
        code: String,
        down: bool,
    },
    /// Text to type as is, at most [`MAX_TEXT_CHARS`] characters.
    Text {
        text: String,
    },
    Phone {
        key: PhoneKey,
    },
}

/// Longest clipboard text carried either way, in characters: with JSON escaping at worst six
/// bytes a character, a clipboard message stays under the 16 KiB a data channel message may be.
pub const MAX_CLIPBOARD_CHARS: usize = 2000;
/// Bytes of PNG per `screenshot_chunk`: base64 makes 16 000 characters of them, under 16 KiB
/// with the message's other fields.
pub const SCREENSHOT_CHUNK_BYTES: usize = 12_000;

/// Requests a viewer sends on the `input` data channel next to [`InputMessage`]s: they ask
/// something of the phone rather than press on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelRequest {
    /// Sets the phone's clipboard to `text` (at most [`MAX_CLIPBOARD_CHARS`]). Owners only.
    Clipboard { text: String },
    /// Asks for a PNG of the screen at its native size, answered by `screenshot_chunk`s (or
    /// `screenshot_failed`) carrying the same `id`.
    Screenshot { id: u32 },
}

/// Messages the node sends a viewer on the `input` data channel (the signaling socket carries
/// only what concerns the connection itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelEvent {
    /// Text was copied inside the phone. Sent to owners only; `truncated`: the phone's text
    /// was longer than [`MAX_CLIPBOARD_CHARS`] and this is its beginning.
    Clipboard { text: String, truncated: bool },
    /// Piece `seq` (0-based) of `total` of screenshot `id`: [`SCREENSHOT_CHUNK_BYTES`] of PNG
    /// (the last piece fewer), base64. The screen is `width`×`height` pixels.
    ScreenshotChunk {
        id: u32,
        seq: u32,
        total: u32,
        width: u32,
        height: u32,
        data: String,
    },
    /// Screenshot `id` could not be taken.
    ScreenshotFailed { id: u32, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The video a 720P H.264 stream announces.
    fn video_720p() -> VideoInfo {
        VideoInfo {
            codec: EncodingType::H264,
            width: 720,
            height: 1280,
            fps: 30,
            bitrate_kbps: 2000,
        }
    }

    fn round_trip<T>(value: &T, expected: serde_json::Value)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let encoded = serde_json::to_value(value).unwrap();
        assert_eq!(encoded, expected);
        let decoded: T = serde_json::from_value(encoded).unwrap();
        assert_eq!(&decoded, value);
    }

    #[test]
    fn hello_debug_leaves_the_device_token_out() {
        let hello = Hello {
            device_id: "dev-1".into(),
            device_token: "tok-secret-1".into(),
            network_type: NetworkType::Wifi,
            encoding_type: EncodingType::H264,
            definition: Definition::P720,
        };
        let shown = format!("{:?}", ClientMessage::Hello(hello));
        assert!(
            shown.contains("dev-1") && !shown.contains("tok-secret-1"),
            "{shown}"
        );
    }

    #[test]
    fn hello_uses_the_contract_names() {
        round_trip(
            &ClientMessage::Hello(Hello {
                device_id: "d1".into(),
                device_token: "t".into(),
                network_type: NetworkType::MobileNetwork,
                encoding_type: EncodingType::H265,
                definition: Definition::P1080,
            }),
            json!({"type":"hello","device_id":"d1","device_token":"t",
                   "network_type":"MOBILE_NETWORK","encoding_type":"H265","definition":"1080P"}),
        );
        for (net, name) in [(NetworkType::Wifi, "WIFI"), (NetworkType::Wired, "WIRED")] {
            assert_eq!(serde_json::to_value(net).unwrap(), json!(name));
        }
        for (def, name) in [(Definition::P540, "540P"), (Definition::P720, "720P")] {
            assert_eq!(serde_json::to_value(def).unwrap(), json!(name));
        }
    }

    #[test]
    fn offer_answer_candidate_round_trip() {
        round_trip(
            &ClientMessage::Offer { sdp: "v=0".into() },
            json!({"type":"offer","sdp":"v=0"}),
        );
        round_trip(
            &NodeMessage::Answer { sdp: "v=0".into() },
            json!({"type":"answer","sdp":"v=0"}),
        );
        let c = Candidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        };
        round_trip(
            &ClientMessage::Candidate(c.clone()),
            json!({"type":"candidate","candidate":c.candidate,"sdpMid":"0","sdpMLineIndex":0}),
        );
        round_trip(
            &NodeMessage::Candidate(c.clone()),
            json!({"type":"candidate","candidate":c.candidate,"sdpMid":"0","sdpMLineIndex":0}),
        );
        // Browsers may send null for both.
        let parsed: ClientMessage = serde_json::from_value(
            json!({"type":"candidate","candidate":"","sdpMid":null,"sdpMLineIndex":null}),
        )
        .unwrap();
        assert_eq!(
            parsed,
            ClientMessage::Candidate(Candidate {
                candidate: String::new(),
                sdp_mid: None,
                sdp_mline_index: None
            })
        );
    }

    #[test]
    fn node_messages_round_trip() {
        round_trip(
            &NodeMessage::Ready {
                ice_servers: vec![
                    IceServer {
                        urls: vec!["stun:127.0.0.1:3478".into()],
                        username: None,
                        credential: None,
                    },
                    IceServer {
                        urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                        username: Some("1700000000:d1".into()),
                        credential: Some("abc=".into()),
                    },
                ],
                video: video_720p(),
                role: Role::Observer,
            },
            json!({"type":"ready","ice_servers":[
                    {"urls":["stun:127.0.0.1:3478"]},
                    {"urls":["turn:127.0.0.1:3478?transport=udp"],"username":"1700000000:d1","credential":"abc="}],
                   "video":{"codec":"H264","width":720,"height":1280,"fps":30,"bitrate_kbps":2000},
                   "role":"observer"}),
        );
        // A node older than roles sends no role: its viewers were all owners.
        let old: NodeMessage = serde_json::from_value(json!({"type":"ready","ice_servers":[],
            "video":{"codec":"H264","width":720,"height":1280,"fps":30,"bitrate_kbps":2000}}))
        .unwrap();
        assert!(matches!(
            old,
            NodeMessage::Ready {
                role: Role::Owner,
                ..
            }
        ));
        round_trip(
            &NodeMessage::Error {
                code: ErrorCode::TooManyViewers,
                message: "full".into(),
            },
            json!({"type":"error","code":"too_many_viewers","message":"full"}),
        );
        round_trip(
            &NodeMessage::InputRefused {
                reason: InputRefusal::Observer,
            },
            json!({"type":"input_refused","reason":"observer"}),
        );
        round_trip(
            &NodeMessage::Error {
                code: ErrorCode::BadToken,
                message: "no".into(),
            },
            json!({"type":"error","code":"bad_token","message":"no"}),
        );
        round_trip(
            &NodeMessage::Bye {
                reason: ByeReason::Expired,
            },
            json!({"type":"bye","reason":"expired"}),
        );
        round_trip(
            &NodeMessage::Bye {
                reason: ByeReason::InstanceGone,
            },
            json!({"type":"bye","reason":"instance_gone"}),
        );
    }

    #[test]
    fn definition_switch_round_trip() {
        round_trip(
            &ClientMessage::Definition {
                definition: Definition::P720,
                encoding_type: None,
            },
            json!({"type":"definition","definition":"720P"}),
        );
        round_trip(
            &ClientMessage::Definition {
                definition: Definition::P1080,
                encoding_type: Some(EncodingType::H265),
            },
            json!({"type":"definition","definition":"1080P","encoding_type":"H265"}),
        );
        round_trip(
            &NodeMessage::Video {
                video: video_720p(),
            },
            json!({"type":"video","video":{"codec":"H264","width":720,"height":1280,"fps":30,"bitrate_kbps":2000}}),
        );
        round_trip(
            &NodeMessage::DefinitionRefused {
                definition: Definition::P540,
                reason: DefinitionRefusal::CodecChange,
                message: "reconnect".into(),
            },
            json!({"type":"definition_refused","definition":"540P","reason":"codec_change","message":"reconnect"}),
        );
        assert!(
            serde_json::from_value::<ClientMessage>(json!({"type":"definition","definition":"4K"}))
                .is_err()
        );
    }

    #[test]
    fn input_messages_round_trip() {
        round_trip(
            &InputMessage::Touch {
                action: TouchAction::Down,
                pointer_id: 1,
                x: 0.25,
                y: 0.5,
            },
            json!({"type":"touch","action":"down","pointer_id":1,"x":0.25,"y":0.5}),
        );
        round_trip(
            &InputMessage::Key {
                code: "KeyA".into(),
                down: true,
            },
            json!({"type":"key","code":"KeyA","down":true}),
        );
        round_trip(
            &InputMessage::Text { text: "hi".into() },
            json!({"type":"text","text":"hi"}),
        );
        round_trip(
            &InputMessage::Phone {
                key: PhoneKey::Recents,
            },
            json!({"type":"phone","key":"recents"}),
        );
        // pointer_id defaults to the first finger.
        let parsed: InputMessage =
            serde_json::from_value(json!({"type":"touch","action":"up","x":0,"y":1})).unwrap();
        assert!(matches!(
            parsed,
            InputMessage::Touch {
                pointer_id: 0,
                action: TouchAction::Up,
                ..
            }
        ));
    }

    #[test]
    fn unknown_types_and_values_are_refused() {
        assert!(serde_json::from_value::<ClientMessage>(json!({"type":"nope"})).is_err());
        assert!(
            serde_json::from_value::<ClientMessage>(json!({"type":"hello","device_id":"d",
            "device_token":"t","network_type":"5G","encoding_type":"H264","definition":"720P"}))
            .is_err()
        );
        assert!(
            serde_json::from_value::<InputMessage>(json!({"type":"phone","key":"volumeup"}))
                .is_err()
        );
    }

    #[test]
    fn phone_keys_use_snake_case() {
        for (key, name) in [
            (PhoneKey::Menu, "menu"),
            (PhoneKey::VolumeUp, "volume_up"),
            (PhoneKey::VolumeDown, "volume_down"),
            (PhoneKey::Power, "power"),
        ] {
            round_trip(
                &InputMessage::Phone { key },
                json!({"type":"phone","key":name}),
            );
        }
    }

    #[test]
    fn channel_messages_round_trip() {
        round_trip(
            &ChannelRequest::Clipboard { text: "hi".into() },
            json!({"type":"clipboard","text":"hi"}),
        );
        round_trip(
            &ChannelRequest::Screenshot { id: 7 },
            json!({"type":"screenshot","id":7}),
        );
        round_trip(
            &ChannelEvent::Clipboard {
                text: "copied".into(),
                truncated: false,
            },
            json!({"type":"clipboard","text":"copied","truncated":false}),
        );
        round_trip(
            &ChannelEvent::ScreenshotChunk {
                id: 7,
                seq: 0,
                total: 2,
                width: 360,
                height: 640,
                data: "iVBORw0=".into(),
            },
            json!({"type":"screenshot_chunk","id":7,"seq":0,"total":2,"width":360,
                   "height":640,"data":"iVBORw0="}),
        );
        round_trip(
            &ChannelEvent::ScreenshotFailed {
                id: 7,
                message: "not running".into(),
            },
            json!({"type":"screenshot_failed","id":7,"message":"not running"}),
        );
    }
}
