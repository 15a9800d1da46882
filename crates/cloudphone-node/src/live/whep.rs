//! WHEP.
