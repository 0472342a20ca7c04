//! Reading and writing `chapar-wire` frames on a libp2p stream, bounded.

use std::io;
use std::time::Duration;

use chapar_store::ChunkBuffers;
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

/// Reads one frame of at most `max` bytes; `Ok(None)` at a clean end of
/// stream. `idle` bounds the wait for *each* piece of it, not the whole:
/// a 1 MiB chunk over a slow satellite link may take minutes and still be
/// making progress; a silent peer may not hold the stream.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
) -> Result<Option<Message>, FrameError> {
    read_message_into(stream, max, idle, None).await
}

/// [`read_message`], with the frame's body (a chunk's bytes), if it has
/// one, read into a buffer taken from `buffers`, so chunk buffers are
/// reused.
pub async fn read_message_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
    buffers: Option<&ChunkBuffers>,
) -> Result<Option<Message>, FrameError> {
    let mut header = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        match patiently(idle, stream.read(&mut header[got..])).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            n => got += n,
        }
    }
    let len = frame_length(header, max)?;
    // The kind and a chunk's id are read apart, so that a chunk's bytes
    // land in a buffer of their own, exactly sized, and stay there.
    let mut head = [0u8; Message::SPLIT_HEAD];
    let lead = len.min(Message::SPLIT_HEAD);
    read_exactly(stream, &mut head[..lead], idle).await?;
    // Only a frame with a body takes a buffer: one taken for an answer
    // without (`ChunkMissing`) would be dropped with it.
    let buffer = match buffers {
        Some(pool) if len > lead => pool.take(),
        _ => Vec::new(),
    };
    let rest = read_body(stream, len - lead, idle, buffer).await?;
    Ok(Some(Message::decode_split(&head[..lead], rest)?))
}

async fn read_exactly<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    idle: Duration,
) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match patiently(idle, stream.read(&mut buf[filled..])).await? {
            0 => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            n => filled += n,
        }
    }
    Ok(())
}

/// Reads `len` bytes, growing the buffer with what actually arrives (a
/// peer that announces a large frame and sends nothing costs nothing).
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    len: usize,
    idle: Duration,
    mut body: Vec<u8>,
) -> Result<Vec<u8>, FrameError> {
    // The whole length is reserved at once: capacity never touched costs
    // no memory, and a buffer that never moves is never copied.
    body.clear();
    body.reserve_exact(len);
    let mut filled = 0;
    while filled < len {
        if filled == body.len() {
            // Zeroed in steps, as the bytes arrive.
            let grow = body.len().max(64 * 1024).min(len - filled);
            body.resize(filled + grow, 0);
        }
        match patiently(idle, stream.read(&mut body[filled..])).await {
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(body)
}

async fn patiently<T>(
    idle: Duration,
    read: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(idle, read).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes one frame (a chunk's bytes from where they are, not copied
/// into a frame buffer first).
pub async fn write_message<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &Message,
) -> io::Result<()> {
    match message {
        Message::ChunkData { id, bytes } => {
            stream
                .write_all(&Message::chunk_data_header(id, bytes.len()))
                .await?;
            stream.write_all(bytes).await
        }
        other => stream.write_all(&other.encode()).await,
    }
}
