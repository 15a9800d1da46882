//! Reading an X display the way a person would see it, for the tests that check input reached
//! the screen (`runtime_x11`, `streaming_chromium`).

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::rust_connection::RustConnection;

/// The pixels (Z pixmap) of the `width`×`height` top-left area of `display`'s root window.
pub(crate) fn screenshot(display: &str, width: u32, height: u32) -> Vec<u8> {
    let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
    let root = conn.setup().roots[screen].root;
    conn.get_image(
        xproto::ImageFormat::Z_PIXMAP,
        root,
        0,
        0,
        width as u16,
        height as u16,
        !0,
    )
    .unwrap()
    .reply()
    .unwrap()
    .data
}

/// An X client on `display` that copies `text` the way a phone's app does: it owns the
/// `CLIPBOARD` selection and answers `UTF8_STRING` (and `TARGETS`) requests until dropped.
pub(crate) struct ClipboardOwner {
    conn: std::sync::Arc<RustConnection>,
    window: xproto::Window,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn atom(conn: &RustConnection, name: &str) -> xproto::Atom {
    conn.intern_atom(false, name.as_bytes())
        .unwrap()
        .reply()
        .unwrap()
        .atom
}

/// A 1×1 window on `display`'s root, for selection traffic.
fn window(conn: &RustConnection, screen: usize) -> xproto::Window {
    let root = conn.setup().roots[screen].root;
    let window = conn.generate_id().unwrap();
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
    .unwrap();
    window
}

impl ClipboardOwner {
    pub(crate) fn copy(display: &str, text: &str) -> ClipboardOwner {
        use x11rb::protocol::Event;
        use x11rb::wrapper::ConnectionExt as _;
        let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
        let conn = std::sync::Arc::new(conn);
        let window = window(&conn, screen);
        let (clipboard, utf8, targets) = (
            atom(&conn, "CLIPBOARD"),
            atom(&conn, "UTF8_STRING"),
            atom(&conn, "TARGETS"),
        );
        conn.set_selection_owner(window, clipboard, x11rb::CURRENT_TIME)
            .unwrap();
        conn.flush().unwrap();
        let text = text.as_bytes().to_vec();
        let serving = std::sync::Arc::clone(&conn);
        let thread = std::thread::spawn(move || {
            let conn = serving;
            while let Ok(event) = conn.wait_for_event() {
                let Event::SelectionRequest(e) = event else {
                    if matches!(event, Event::ClientMessage(_)) {
                        return;
                    }
                    continue;
                };
                let served = if e.target == utf8 {
                    conn.change_property8(
                        xproto::PropMode::REPLACE,
                        e.requestor,
                        e.property,
                        utf8,
                        &text,
                    )
                    .unwrap();
                    true
                } else if e.target == targets {
                    conn.change_property32(
                        xproto::PropMode::REPLACE,
                        e.requestor,
                        e.property,
                        xproto::AtomEnum::ATOM,
                        &[targets, utf8],
                    )
                    .unwrap();
                    true
                } else {
                    false
                };
                let notify = xproto::SelectionNotifyEvent {
                    response_type: xproto::SELECTION_NOTIFY_EVENT,
                    sequence: 0,
                    time: e.time,
                    requestor: e.requestor,
                    selection: e.selection,
                    target: e.target,
                    property: if served { e.property } else { x11rb::NONE },
                };
                conn.send_event(false, e.requestor, xproto::EventMask::NO_EVENT, notify)
                    .unwrap();
                conn.flush().unwrap();
            }
        });
        ClipboardOwner {
            conn,
            window,
            thread: Some(thread),
        }
    }
}

impl Drop for ClipboardOwner {
    fn drop(&mut self) {
        let wake = xproto::ClientMessageEvent::new(32, self.window, 1u32, [0u32; 5]);
        let _ = self
            .conn
            .send_event(false, self.window, xproto::EventMask::NO_EVENT, wake);
        let _ = self.conn.flush();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What pasting on `display` would give: the `CLIPBOARD` selection as UTF-8, `None` when no
/// one owns it or its owner does not answer within 2 s.
pub(crate) fn read_clipboard(display: &str) -> Option<String> {
    use x11rb::protocol::Event;
    let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
    let window = window(&conn, screen);
    let (clipboard, utf8, property) = (
        atom(&conn, "CLIPBOARD"),
        atom(&conn, "UTF8_STRING"),
        atom(&conn, "CP_TEST_PASTE"),
    );
    conn.convert_selection(window, clipboard, utf8, property, x11rb::CURRENT_TIME)
        .unwrap();
    conn.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        match conn.poll_for_event().unwrap() {
            Some(Event::SelectionNotify(e)) => {
                if e.property == x11rb::NONE {
                    return None;
                }
                let reply = conn
                    .get_property(true, window, property, xproto::AtomEnum::ANY, 0, 1 << 16)
                    .unwrap()
                    .reply()
                    .unwrap();
                return Some(String::from_utf8(reply.value).unwrap());
            }
            Some(_) => {}
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    None
}

/// Covers `w`×`h` pixels at (`x`, `y`) of `display` with a window of noise (which compresses
/// badly, so a PNG of the screen is large); the window stays while the connection lives.
pub(crate) fn noise_window(display: &str, x: i16, y: i16, w: u16, h: u16) -> RustConnection {
    let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
    let root = conn.setup().roots[screen].root;
    let depth = conn.setup().roots[screen].root_depth;
    let window = conn.generate_id().unwrap();
    conn.create_window(
        depth,
        window,
        root,
        x,
        y,
        w,
        h,
        0,
        xproto::WindowClass::INPUT_OUTPUT,
        0,
        &xproto::CreateWindowAux::new().override_redirect(1),
    )
    .unwrap();
    conn.map_window(window).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    let gc = conn.generate_id().unwrap();
    conn.create_gc(gc, window, &xproto::CreateGCAux::new())
        .unwrap();
    let mut state: u32 = 0x9e37_79b9;
    // Strips of 32 rows, under the core protocol's request size.
    for top in (0..h).step_by(32) {
        let rows = 32.min(h - top);
        let pixels: Vec<u8> = (0..usize::from(rows) * usize::from(w) * 4)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        conn.put_image(
            xproto::ImageFormat::Z_PIXMAP,
            window,
            gc,
            w,
            rows,
            0,
            top as i16,
            0,
            depth,
            &pixels,
        )
        .unwrap();
    }
    conn.get_input_focus().unwrap().reply().unwrap();
    conn
}
