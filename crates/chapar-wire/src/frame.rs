//! Framing: a big-endian `u32` length, then that many bytes (a type byte
//! and the body). The length is checked against the protocol's limit
//! before anything is allocated.

use crate::message::WireError;

/// Bytes in a frame header.
pub const FRAME_HEADER: usize = 4;

/// The length a frame header announces, refused if over `max`.
pub fn frame_length(header: [u8; FRAME_HEADER], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(WireError::Malformed("empty frame"));
    }
    if len > max {
        return Err(WireError::TooLarge { size: len, max });
    }
    Ok(len)
}
