//! The stream header codec: every request and response on a service stream is one
//! *header*, a `u32` big-endian length followed by that many bytes of a MessagePack map.
//!
//! ```text
//! header = length:u32be  body:length bytes (MessagePack map, at most MAX_HEADER_LEN)
//! ```
//!
//! Requests ([`Request`]) and responses ([`Response`]) are internally tagged maps: the key
//! `"type"` names the variant (`"perf"`, `"file_stat"`, ...), the other keys are its fields.
//! Unknown variants, missing fields, oversized or truncated headers are typed
//! [`HeaderError`]s, never panics, and nothing is allocated before the length is checked.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest header body accepted or sent. 64 KiB: the biggest legitimate header is a file
/// request (a name of at most 255 bytes and a 64-character hash), so this leaves two orders
/// of magnitude of room while bounding what a peer can make the node allocate.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Why a header could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The announced length exceeds [`MAX_HEADER_LEN`].
    #[error("header of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced (or encoded) length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a header.
    #[error("stream ended inside a header ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the header needed.
        expected: usize,
    },
    /// The body is not a MessagePack map of a known request or response.
    #[error("malformed header: {0}")]
    Malformed(String),
    /// The value could not be encoded (a bug in the caller's type).
    #[error("cannot encode header: {0}")]
    Encode(String),
    /// Reading or writing the stream failed.
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A request a client sends at the start of (or later on) a service stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Throughput test: the client sends `upload` bytes, the server answers
    /// [`Response::PerfAck`] and then sends `download` bytes.
    Perf {
        /// Bytes the client will send.
        upload: u64,
        /// Bytes the server must send back after its acknowledgement.
        download: u64,
    },
    /// How much of this file does the server already have? Answered with
    /// [`Response::FileStat`].
    FileStat {
        /// Plain file name (no directories).
        name: String,
        /// The file's full size.
        size: u64,
        /// SHA-256 of the whole file, lowercase hex.
        sha256: String,
    },
    /// Upload a file from `offset` on; answered with [`Response::Ready`] (then the client
    /// sends `size - offset` bytes) and finally [`Response::FileDone`].
    File {
        /// Plain file name (no directories).
        name: String,
        /// The file's full size.
        size: u64,
        /// SHA-256 of the whole file, lowercase hex.
        sha256: String,
        /// First byte the client sends (what the server already has).
        offset: u64,
    },
}

/// A server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// The upload part of a perf request was fully received.
    PerfAck {
        /// Bytes received.
        received: u64,
    },
    /// The server holds a partial `name.part` of `have` bytes whose SHA-256 is
    /// `prefix_sha256`; the client resumes only if its own first `have` bytes hash the same.
    FileStat {
        /// Bytes of the partial file (0 if none).
        have: u64,
        /// SHA-256 of those bytes, lowercase hex.
        prefix_sha256: String,
    },
    /// The server is ready to receive the file from `offset` on.
    Ready {
        /// Where the server will append.
        offset: u64,
    },
    /// The whole file was received and hashed.
    FileDone {
        /// Whether the hash matched (the file was then moved to its final name).
        ok: bool,
        /// The SHA-256 the server computed, lowercase hex.
        sha256: String,
    },
    /// The request was refused or failed.
    Error {
        /// Why, for a human.
        message: String,
    },
}

/// Encodes `value` as one header (length prefix included).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, HeaderError> {
    let body = rmp_serde::to_vec_named(value).map_err(|e| HeaderError::Encode(e.to_string()))?;
    if body.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge { len: body.len(), max: MAX_HEADER_LEN });
    }
    // Fits: MAX_HEADER_LEN is far below u32::MAX.
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a header body (without its length prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, HeaderError> {
    if body.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge { len: body.len(), max: MAX_HEADER_LEN });
    }
    rmp_serde::from_slice(body).map_err(|e| HeaderError::Malformed(e.to_string()))
}

/// Decodes one complete header (length prefix included) from `buf`, which must hold
/// exactly one header.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, HeaderError> {
    let Some((len, body)) = buf.split_first_chunk::<4>() else {
        return Err(HeaderError::Truncated { got: buf.len(), expected: 4 });
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge { len, max: MAX_HEADER_LEN });
    }
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(HeaderError::Truncated { got: body.len(), expected: len }),
        std::cmp::Ordering::Greater => {
            Err(HeaderError::Malformed(format!("{} bytes after the header", body.len() - len)))
        }
        std::cmp::Ordering::Equal => decode_body(body),
    }
}

/// Writes one header and flushes.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> Result<(), HeaderError> {
    let buf = encode(value)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one header. `Ok(None)` if the stream ended cleanly before its first byte (the
/// peer has no further request). Not cancel safe: a header partly read is lost.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, HeaderError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(HeaderError::Truncated { got, expected: 4 }) };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge { len, max: MAX_HEADER_LEN });
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = r.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(HeaderError::Truncated { got, expected: len });
        }
        got += n;
    }
    decode_body(&body).map(Some)
}

/// Reads one header that must be there (the stream ending first is an error).
pub async fn expect<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T, HeaderError> {
    read(r).await?.ok_or(HeaderError::Truncated { got: 0, expected: 4 })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;

    fn file_req() -> Request {
        Request::File { name: "a.bin".into(), size: 10, sha256: "00".repeat(32), offset: 3 }
    }

    #[test]
    fn round_trips() {
        let reqs = [
            Request::Perf { upload: 1 << 40, download: 0 },
            Request::FileStat { name: "x".into(), size: 0, sha256: "ab".repeat(32) },
            file_req(),
        ];
        for r in reqs {
            assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
        }
        let resps = [
            Response::PerfAck { received: 5 },
            Response::FileStat { have: 7, prefix_sha256: "cd".repeat(32) },
            Response::Ready { offset: 9 },
            Response::FileDone { ok: false, sha256: "ef".repeat(32) },
            Response::Error { message: "no".into() },
        ];
        for r in resps {
            assert_eq!(decode::<Response>(&encode(&r).unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn wire_layout_is_length_then_named_map() {
        let b = encode(&Request::Perf { upload: 1, download: 2 }).unwrap();
        assert_eq!(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize, b.len() - 4);
        // fixmap with 3 entries, first key "type"
        assert_eq!(b[4], 0x83);
        assert_eq!(&b[5..10], b"\xa4type");
    }

    #[test]
    fn rejects_oversize_announcement_without_allocating() {
        let mut b = ((MAX_HEADER_LEN + 1) as u32).to_be_bytes().to_vec();
        b.push(0);
        assert!(matches!(decode::<Request>(&b), Err(HeaderError::TooLarge { .. })));
        let b = u32::MAX.to_be_bytes();
        assert!(matches!(decode::<Request>(&b), Err(HeaderError::TooLarge { .. })));
    }

    #[test]
    fn rejects_oversize_encoding() {
        let r = Request::FileStat { name: "n".repeat(MAX_HEADER_LEN), size: 0, sha256: String::new() };
        assert!(matches!(encode(&r), Err(HeaderError::TooLarge { .. })));
    }

    #[test]
    fn truncated_and_trailing_bytes() {
        let b = encode(&file_req()).unwrap();
        for cut in 0..b.len() {
            assert!(matches!(decode::<Request>(&b[..cut]), Err(HeaderError::Truncated { .. })), "cut {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(decode::<Request>(&longer), Err(HeaderError::Malformed(_))));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let bodies: [&[u8]; 6] = [
            b"",
            b"\xc1",                           // never-used MessagePack byte
            b"\x81\xa4type\xa4nope",           // unknown variant
            b"\x81\xa4type\xa4perf",           // missing fields
            b"\x92\x01\x02",                   // an array, not a map
            b"\x82\xa4type\xa4perf\xa6upload", // map shorter than announced
        ];
        for body in bodies {
            let mut b = (body.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(body);
            assert!(matches!(decode::<Request>(&b), Err(HeaderError::Malformed(_))), "{body:?}");
        }
        // Pseudo-random bodies: any outcome but a panic.
        let mut x: u32 = 0x1234_5678;
        for len in 0..300usize {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode_body::<Request>(&body);
            let _ = decode_body::<Response>(&body);
        }
    }

    #[tokio::test]
    async fn async_read_write() {
        let (mut a, mut b) = tokio::io::duplex(16);
        let w = tokio::spawn(async move {
            write(&mut a, &file_req()).await.unwrap();
            write(&mut a, &Request::Perf { upload: 3, download: 4 }).await.unwrap();
        });
        assert_eq!(read::<_, Request>(&mut b).await.unwrap(), Some(file_req()));
        assert_eq!(expect::<_, Request>(&mut b).await.unwrap(), Request::Perf { upload: 3, download: 4 });
        w.await.unwrap();
        assert!(read::<_, Request>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn async_truncation_and_oversize() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(read::<_, Request>(&mut b).await, Err(HeaderError::Truncated { got: 2, .. })));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read::<_, Request>(&mut b).await, Err(HeaderError::TooLarge { .. })));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        assert!(matches!(
            read::<_, Request>(&mut b).await,
            Err(HeaderError::Truncated { got: 2, expected: 10 })
        ));
    }
}
