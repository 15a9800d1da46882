//! glass (in progress).
