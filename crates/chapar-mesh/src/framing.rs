//! Reading and writing `chapar-wire` frames on a libp2p stream, bounded.

use std::io;

use chapar_wire::{frame_length, Message, WireError, FRAME_HEADER};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended mid-frame.
    #[error("stream: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something malformed or oversized: it gets cut off.
    #[error("peer sent a bad frame: {0}")]
    Wire(#[from] WireError),
}

/// Reads one frame of at most `max` bytes; `Ok(None)` at a clean end of stream.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Option<Message>, FrameError> {
    let mut header = [0u8; FRAME_HEADER];
    match stream.read(&mut header[..1]).await? {
        0 => return Ok(None),
        _ => stream.read_exact(&mut header[1..]).await?,
    }
    let len = frame_length(header, max)?;
    // Grow with what actually arrives: a peer that announces a large frame
    // and sends nothing costs nothing.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() != len {
        return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(Message::decode(&body)?))
}

/// Writes one frame.
pub async fn write_message<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &Message,
) -> io::Result<()> {
    stream.write_all(&message.encode()).await
}
