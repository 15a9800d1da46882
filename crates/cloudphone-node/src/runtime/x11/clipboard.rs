//! The phone's clipboard on an Xvfb display: the X `CLIPBOARD` selection, watched and set by
//! one node-side X client per instance.
//!
//! - Watching: XFixes selection-owner notifications for `CLIPBOARD`. When an app in the phone
//!   becomes the owner (it copied something), the agent asks it for `UTF8_STRING` into a
//!   property of its own window and broadcasts the text. Nothing is polled.
//! - Setting: the agent becomes the owner with the viewer's text and answers the apps'
//!   `SelectionRequest`s (`TARGETS`, `UTF8_STRING`, `STRING`, `TEXT`) until an app copies
//!   something else. Its own ownership changes are not reported back.
//!
//! One thread per instance blocks on the connection's events; a setter sends its requests on
//! the same (thread-safe) connection. The thread ends when the display goes away or the
//! agent is dropped (a client message to its own window wakes it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cloudphone_signaling::MAX_CLIPBOARD_CHARS;
use tokio::sync::broadcast;
use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::{round_trip, x_err};
use crate::runtime::common::lock;
use crate::runtime::{Copied, RuntimeError};

/// Largest selection read from an app, in bytes (the text is cut to [`MAX_CLIPBOARD_CHARS`]
/// characters afterwards); larger transfers (the INCR protocol) are not followed.
const MAX_READ_BYTES: u32 = 64 * 1024;

x11rb::atom_manager! {
    Atoms: AtomsCookie {
        CLIPBOARD,
        UTF8_STRING,
        TARGETS,
        TEXT,
        INCR,
        CLOUDPHONE_CLIPBOARD,
        CLOUDPHONE_WAKE,
    }
}

/// One instance's clipboard agent: this handle, and a thread running a clone of its [`Agent`].
pub(super) struct XClipboard(Agent);

/// What the handle and the agent's thread share.
#[derive(Clone)]
struct Agent {
    conn: Arc<RustConnection>,
    window: xproto::Window,
    atoms: Atoms,
    /// What the agent serves while it owns the selection.
    ours: Arc<Mutex<Option<Vec<u8>>>>,
    /// Text copied by the phone's apps, to every subscribed viewer.
    changes: broadcast::Sender<Copied>,
    stop: Arc<AtomicBool>,
}

impl XClipboard {
    /// Connects to display `:n` and starts watching its clipboard.
    pub(super) fn start(display: u32) -> Result<Self, RuntimeError> {
        let e = |e: &dyn std::fmt::Display| x_err(format!("clipboard: {e}"));
        let (conn, screen) =
            RustConnection::connect(Some(&format!(":{display}"))).map_err(|x| e(&x))?;
        let conn = Arc::new(conn);
        let root = conn
            .setup()
            .roots
            .get(screen)
            .ok_or_else(|| x_err("display has no screen"))?
            .root;
        let atoms = Atoms::new(&*conn)
            .map_err(|x| e(&x))?
            .reply()
            .map_err(|x| e(&x))?;
        conn.xfixes_query_version(5, 0)
            .map_err(|x| e(&x))?
            .reply()
            .map_err(|x| e(&x))?;
        let window = conn.generate_id().map_err(|x| e(&x))?;
        conn.create_window(
            0,
            window,
            root,
            0,
            0,
            1,
            1,
            0,
            xproto::WindowClass::INPUT_ONLY,
            0,
            &xproto::CreateWindowAux::new(),
        )
        .map_err(|x| e(&x))?;
        conn.xfixes_select_selection_input(
            window,
            atoms.CLIPBOARD,
            xfixes::SelectionEventMask::SET_SELECTION_OWNER,
        )
        .map_err(|x| e(&x))?;
        conn.flush().map_err(|x| e(&x))?;
        let (changes, _) = broadcast::channel(16);
        let agent = Agent {
            conn,
            window,
            atoms,
            ours: Arc::default(),
            changes,
            stop: Arc::default(),
        };
        let worker = agent.clone();
        std::thread::Builder::new()
            .name(format!("clipboard :{display}"))
            .spawn(move || worker.run())
            .map_err(RuntimeError::Io)?;
        Ok(XClipboard(agent))
    }

    /// Text the phone's apps copy from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Copied> {
        self.0.changes.subscribe()
    }

    /// Makes `text` the phone's clipboard (blocking: one request and a flush).
    pub(super) fn set(&self, text: &str) -> Result<(), RuntimeError> {
        *lock(&self.0.ours) = Some(text.as_bytes().to_vec());
        self.0
            .conn
            .set_selection_owner(self.0.window, self.0.atoms.CLIPBOARD, x11rb::CURRENT_TIME)
            .map_err(|e| x_err(e.to_string()))?;
        // A round trip, so the phone's apps see the new owner once this returns.
        round_trip(&self.0.conn)?;
        Ok(())
    }
}

impl Drop for XClipboard {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        // Wakes the worker blocked on the connection so it sees `stop`.
        let wake = xproto::ClientMessageEvent::new(
            32,
            self.0.window,
            self.0.atoms.CLOUDPHONE_WAKE,
            [0u32; 5],
        );
        let _ = self
            .0
            .conn
            .send_event(false, self.0.window, xproto::EventMask::NO_EVENT, wake);
        let _ = self.0.conn.flush();
    }
}

/// The thread's side: watches and serves the selection until the handle drops.
impl Agent {
    fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            let Ok(event) = self.conn.wait_for_event() else {
                // The display is gone: the instance stopped.
                return;
            };
            if let Err(e) = self.handle(event) {
                tracing::debug!(error = %e, "clipboard event not handled");
            }
        }
    }

    fn handle(&self, event: Event) -> Result<(), Box<dyn std::error::Error>> {
        match event {
            Event::XfixesSelectionNotify(e) if e.selection == self.atoms.CLIPBOARD => {
                if e.owner == self.window || e.owner == x11rb::NONE {
                    return Ok(());
                }
                // An app copied: ours is no longer the clipboard; ask the app for its text.
                *lock(&self.ours) = None;
                self.conn.convert_selection(
                    self.window,
                    self.atoms.CLIPBOARD,
                    self.atoms.UTF8_STRING,
                    self.atoms.CLOUDPHONE_CLIPBOARD,
                    e.selection_timestamp,
                )?;
                self.conn.flush()?;
            }
            Event::SelectionNotify(e) if e.requestor == self.window => {
                if e.property == x11rb::NONE {
                    return Ok(());
                }
                let reply = self
                    .conn
                    .get_property(
                        true,
                        self.window,
                        e.property,
                        xproto::AtomEnum::ANY,
                        0,
                        MAX_READ_BYTES / 4,
                    )?
                    .reply()?;
                if reply.type_ == self.atoms.INCR {
                    tracing::debug!("clipboard text too large to follow (INCR)");
                    return Ok(());
                }
                let text = String::from_utf8_lossy(&reply.value);
                let truncated = text.chars().count() > MAX_CLIPBOARD_CHARS;
                let text: String = text.chars().take(MAX_CLIPBOARD_CHARS).collect();
                // No viewer listening is fine.
                let _ = self.changes.send(Copied { text, truncated });
            }
            Event::SelectionRequest(e) => self.answer(&e)?,
            Event::SelectionClear(_) => *lock(&self.ours) = None,
            _ => {}
        }
        Ok(())
    }

    /// Serves an app's paste while the agent owns the clipboard.
    fn answer(&self, e: &xproto::SelectionRequestEvent) -> Result<(), Box<dyn std::error::Error>> {
        let ours = lock(&self.ours).clone();
        // Old clients leave `property` empty: the target names it (ICCCM 2.2).
        let property = if e.property == x11rb::NONE {
            e.target
        } else {
            e.property
        };
        let a = &self.atoms;
        let served = match ours {
            Some(text) if e.selection == a.CLIPBOARD => {
                if e.target == a.TARGETS {
                    let targets = [
                        a.TARGETS,
                        a.UTF8_STRING,
                        u32::from(xproto::AtomEnum::STRING),
                        a.TEXT,
                    ];
                    self.conn.change_property32(
                        xproto::PropMode::REPLACE,
                        e.requestor,
                        property,
                        xproto::AtomEnum::ATOM,
                        &targets,
                    )?;
                    true
                } else if e.target == a.UTF8_STRING
                    || e.target == a.TEXT
                    || e.target == u32::from(xproto::AtomEnum::STRING)
                {
                    let kind = if e.target == a.TEXT {
                        a.UTF8_STRING
                    } else {
                        e.target
                    };
                    self.conn.change_property8(
                        xproto::PropMode::REPLACE,
                        e.requestor,
                        property,
                        kind,
                        &text,
                    )?;
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        let notify = xproto::SelectionNotifyEvent {
            response_type: xproto::SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: e.time,
            requestor: e.requestor,
            selection: e.selection,
            target: e.target,
            property: if served { property } else { x11rb::NONE },
        };
        self.conn
            .send_event(false, e.requestor, xproto::EventMask::NO_EVENT, notify)?;
        self.conn.flush()?;
        Ok(())
    }
}
