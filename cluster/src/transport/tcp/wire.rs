//! The TCP data plane's framing: preamble, header, replies and their status
//! codes, shared by the receiver and the sender.
//!
//! Invariant: decoding never trusts a length from the wire beyond its cap
//! ([`MAX_HEADER_BYTES`], `MAX_REPLY_BYTES`), and never panics.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::KvLayoutDesc;
use crate::transport::TransportError;

/// First bytes of every transfer.
pub const MAGIC: [u8; 4] = *b"PDKV";
/// Version of this wire format; a receiver refuses any other.
pub const WIRE_VERSION: u16 = 1;
/// Upper bound of an encoded [`TransferHeader`].
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Upper bound of a reply message.
pub(super) const MAX_REPLY_BYTES: usize = 64 << 10;
/// Magic + version + header length.
pub(super) const PREAMBLE_BYTES: usize = 10;

/// What precedes a transfer's block bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferHeader {
    pub ticket: u64,
    pub layout: KvLayoutDesc,
    /// Destination block ids, in the order of the bytes.
    pub blocks: Vec<u32>,
    pub total_bytes: u64,
}

/// Reply status codes.
pub(super) const ST_OK: u8 = 0;
pub(super) const ST_REFUSED: u8 = 1;
pub(super) const ST_LAYOUT: u8 = 2;
pub(super) const ST_TIMEOUT: u8 = 3;
pub(super) const ST_ENGINE: u8 = 4;
pub(super) const ST_ENGINE_GONE: u8 = 5;

fn header_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_HEADER_BYTES>()
}

pub fn encode_header(h: &TransferHeader) -> Result<Vec<u8>, TransportError> {
    let b = bincode::serde::encode_to_vec(h, header_config())
        .map_err(|e| refused(format!("header does not encode: {e}")))?;
    if b.len() > MAX_HEADER_BYTES {
        return Err(refused(format!("header of {} bytes is too large", b.len())));
    }
    Ok(b)
}

pub fn decode_header(bytes: &[u8]) -> Result<TransferHeader, String> {
    let (h, used): (TransferHeader, usize) =
        bincode::serde::decode_from_slice(bytes, header_config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(h)
}

pub(super) fn encode_error(e: &TransportError) -> (u8, Vec<u8>) {
    match e {
        TransportError::LayoutMismatch { receiver, .. } => (
            ST_LAYOUT,
            bincode::serde::encode_to_vec(receiver, header_config()).unwrap_or_default(),
        ),
        TransportError::Timeout(ms) => (ST_TIMEOUT, ms.to_string().into_bytes()),
        TransportError::Engine(m) => (ST_ENGINE, m.clone().into_bytes()),
        TransportError::EngineGone => (ST_ENGINE_GONE, Vec::new()),
        TransportError::Refused(m) | TransportError::Io(m) => (ST_REFUSED, m.clone().into_bytes()),
    }
}

pub(super) fn decode_reply(
    st: u8,
    body: &[u8],
    sender: KvLayoutDesc,
) -> Result<(), TransportError> {
    let text = || String::from_utf8_lossy(body).into_owned();
    match st {
        ST_OK => Ok(()),
        ST_LAYOUT => {
            let receiver = bincode::serde::decode_from_slice(body, header_config())
                .map(|(l, _)| l)
                .map_err(|_| refused("layout mismatch (receiver layout unreadable)"))?;
            Err(TransportError::LayoutMismatch { sender, receiver })
        }
        ST_TIMEOUT => Err(TransportError::Timeout(text().parse().unwrap_or(0))),
        ST_ENGINE => Err(TransportError::Engine(text())),
        ST_ENGINE_GONE => Err(TransportError::EngineGone),
        ST_REFUSED => Err(TransportError::Refused(text())),
        other => Err(refused(format!("unknown reply status {other}: {}", text()))),
    }
}

pub(super) async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    st: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let body = &body[..body.len().min(MAX_REPLY_BYTES)];
    let mut buf = Vec::with_capacity(5 + body.len());
    buf.push(st);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await
}

pub(super) async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h).await?;
    let n = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if n > MAX_REPLY_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("reply of {n} bytes"),
        ));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    Ok((h[0], body))
}

/// The preamble that opens a transfer whose header is `header_len` bytes.
pub(super) fn preamble(header_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(PREAMBLE_BYTES + header_len);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    p.extend_from_slice(&(header_len as u32).to_le_bytes());
    p
}

fn refused(msg: impl Into<String>) -> TransportError {
    TransportError::Refused(msg.into())
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// At most eight ids, for log and error lines.
pub(super) fn show_blocks(ids: impl ExactSizeIterator<Item = u32>) -> String {
    let n = ids.len();
    let head: Vec<String> = ids.take(8).map(|i| i.to_string()).collect();
    let more = if n > 8 {
        format!(", … ({n} in all)")
    } else {
        String::new()
    };
    format!("[{}{more}]", head.join(", "))
}
