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
