//! The frame codec (PROTOCOL.md §2): `varint length ‖ protobuf Frame`, optionally with the
//! frame zstd-compressed inside a `compressed` frame.
//!
//! The length is checked against the limit before a byte of the body is buffered, so a
//! peer cannot make us allocate more than `max_frame` (+ one read) per stream. This module
//! knows nothing about streams or sessions.
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use std::io::Read;

use crate::limits::{COMPRESS_THRESHOLD_BYTES, MAX_DECOMPRESSED_BYTES, MAX_FRAME_BYTES};
use crate::pb::{frame::Kind, Frame};

/// Why bytes could not be read as frames. Every variant is fatal for the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces a frame over the limit (§2.1).
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced (or decompressed) length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length prefix is not a valid varint (more than 10 bytes or over 64 bits).
    #[error("invalid varint length prefix")]
    BadLength,
    /// The body is not a valid protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A compressed frame that is not valid zstd.
    #[error("invalid zstd payload: {0}")]
    Decompress(String),
    /// A compressed frame that contains another compressed frame.
    #[error("nested compressed frame")]
    NestedCompression,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// Encode one frame with its length prefix, uncompressed.
pub fn encode_frame(frame: &Frame) -> Bytes {
    let len = frame.encoded_len();
    let mut out = BytesMut::with_capacity(len + 10);
    prost::encoding::encode_varint(len as u64, &mut out);
    frame.encode(&mut out).expect("BytesMut grows");
    out.freeze()
}

/// Encode `Frame { event }` straight from a shared event, without cloning it. The bytes
/// are identical to `encode_frame` of that frame.
pub fn encode_event_frame(event: &crate::pb::ConversationEvent) -> Bytes {
    // Frame.event is field 6, length-delimited.
    let body_len = prost::encoding::message::encoded_len(6, event);
    let mut out = BytesMut::with_capacity(body_len + 10);
    prost::encoding::encode_varint(body_len as u64, &mut out);
    prost::encoding::message::encode(6, event, &mut out);
    out.freeze()
}

/// Encode one frame, compressing it when it is large and compression helps.
/// Fails when even the compressed frame is over `max_frame`.
pub fn encode_frame_compressed(frame: &Frame, max_frame: usize) -> Result<Bytes, FrameError> {
    let len = frame.encoded_len();
    if len < COMPRESS_THRESHOLD_BYTES {
        return Ok(encode_frame(frame));
    }
    if len > MAX_DECOMPRESSED_BYTES {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_DECOMPRESSED_BYTES,
        });
    }
    let raw = frame.encode_to_vec();
    let packed = ruzstd::encoding::compress_to_vec(&raw[..], ruzstd::encoding::CompressionLevel::Fastest);
    let outer = if packed.len() < raw.len() {
        Frame {
            kind: Some(Kind::Compressed(packed)),
        }
    } else {
        frame.clone()
    };
    let outer_len = outer.encoded_len();
    if outer_len > max_frame {
        return Err(FrameError::TooLarge {
            len: outer_len as u64,
            max: max_frame,
        });
    }
    Ok(encode_frame(&outer))
}

/// Read a varint without consuming it. `Ok(None)`: more bytes needed.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err(FrameError::BadLength);
        }
        value |= part << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        Err(FrameError::BadLength)
    } else {
        Ok(None)
    }
}

/// Decode one frame from the front of `buf` if a whole one is there.
///
/// `Ok(None)` leaves `buf` untouched: more bytes are needed. The announced length is
/// checked against `max_frame` before anything else, and compressed frames are unpacked
/// (at most [`MAX_DECOMPRESSED_BYTES`]).
pub fn decode_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    let Some((len, header)) = peek_varint(buf)? else {
        return Ok(None);
    };
    if len > max_frame as u64 {
        return Err(FrameError::TooLarge { len, max: max_frame });
    }
    let len = len as usize;
    if buf.len() < header + len {
        return Ok(None);
    }
    buf.advance(header);
    let body = buf.split_to(len).freeze();
    decode_body(body).map(Some)
}

/// Decode a frame body (no length prefix), unpacking compression.
pub fn decode_body(body: Bytes) -> Result<Frame, FrameError> {
    let frame = Frame::decode(body)?;
    match frame.kind {
        Some(Kind::Compressed(packed)) => {
            let raw = decompress(&packed)?;
            let inner = Frame::decode(&raw[..])?;
            if matches!(inner.kind, Some(Kind::Compressed(_))) {
                return Err(FrameError::NestedCompression);
            }
            Ok(inner)
        }
        _ => Ok(frame),
    }
}

fn decompress(packed: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut src = packed;
    let decoder =
        ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|e| FrameError::Decompress(e.to_string()))?;
    let mut raw = Vec::new();
    decoder
        .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| FrameError::Decompress(e.to_string()))?;
    if raw.len() > MAX_DECOMPRESSED_BYTES {
        return Err(FrameError::TooLarge {
            len: raw.len() as u64,
            max: MAX_DECOMPRESSED_BYTES,
        });
    }
    Ok(raw)
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that rejects frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Append received bytes. Call [`FrameDecoder::next_frame`] until it returns `None`.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.put_slice(data);
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        decode_frame(&mut self.buf, self.max_frame)
    }

    /// Call when the stream has ended: errors if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Take the bytes buffered after the last decoded frame (a stream whose header frame is
    /// followed by raw bytes: downloads, PROTOCOL.md §11.4).
    pub fn take_rest(&mut self) -> bytes::Bytes {
        self.buf.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn ping(nonce: u64) -> Frame {
        Frame {
            kind: Some(Kind::Request(pb::Request {
                id: 7,
                op: Some(pb::request::Op::Ping(pb::Ping { nonce })),
            })),
        }
    }

    #[test]
    fn roundtrip_in_single_byte_pieces() {
        let bytes = [encode_frame(&ping(1)), encode_frame(&ping(2))].concat();
        let mut dec = FrameDecoder::default();
        let mut got = vec![];
        for b in bytes {
            dec.push(&[b]);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![ping(1), ping(2)]);
        dec.finish().unwrap();
    }

    #[test]
    fn oversize_length_is_rejected_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(1000);
        let mut head = BytesMut::new();
        prost::encoding::encode_varint(1001, &mut head);
        dec.push(&head);
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::TooLarge { len: 1001, max: 1000 })
        ));
    }

    #[test]
    fn varint_of_2_pow_63_is_too_large_and_11_byte_varint_is_bad() {
        let mut b = BytesMut::new();
        prost::encoding::encode_varint(1 << 63, &mut b);
        assert!(matches!(
            decode_frame(&mut b, MAX_FRAME_BYTES),
            Err(FrameError::TooLarge { .. })
        ));
        let mut b = BytesMut::from(&[0xffu8; 11][..]);
        assert!(matches!(
            decode_frame(&mut b, MAX_FRAME_BYTES),
            Err(FrameError::BadLength)
        ));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let bytes = encode_frame(&ping(3));
        let mut dec = FrameDecoder::default();
        dec.push(&bytes[..bytes.len() - 1]);
        assert!(dec.next_frame().unwrap().is_none());
        assert!(matches!(dec.finish(), Err(FrameError::Truncated(_))));
    }

    #[test]
    fn large_frames_compress_and_roundtrip() {
        let text = "hello natter ".repeat(5000);
        let frame = Frame {
            kind: Some(Kind::Event(pb::ConversationEvent {
                conversation_id: 1,
                seq: 1,
                body: Some(pb::conversation_event::Body::Message(pb::MessageEvent {
                    client_msg_id: "x".into(),
                    body: Some(pb::MessageBody {
                        text,
                        ..Default::default()
                    }),
                })),
                ..Default::default()
            })),
        };
        let bytes = encode_frame_compressed(&frame, MAX_FRAME_BYTES).unwrap();
        assert!(
            bytes.len() < frame.encoded_len() / 4,
            "compression should help: {}",
            bytes.len()
        );
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode_frame(&mut buf, MAX_FRAME_BYTES).unwrap(), Some(frame));
    }

    #[test]
    fn event_frames_encode_like_frames() {
        let ev = pb::ConversationEvent {
            conversation_id: 3,
            seq: 9,
            sender_username: "a".into(),
            ..Default::default()
        };
        let frame = Frame {
            kind: Some(Kind::Event(ev.clone())),
        };
        assert_eq!(encode_event_frame(&ev), encode_frame(&frame));
    }

    #[test]
    fn nested_compression_is_rejected() {
        let inner = Frame {
            kind: Some(Kind::Compressed(vec![1, 2, 3])),
        }
        .encode_to_vec();
        let packed = ruzstd::encoding::compress_to_vec(&inner[..], ruzstd::encoding::CompressionLevel::Fastest);
        let outer = encode_frame(&Frame {
            kind: Some(Kind::Compressed(packed)),
        });
        let mut buf = BytesMut::from(&outer[..]);
        assert!(matches!(
            decode_frame(&mut buf, MAX_FRAME_BYTES),
            Err(FrameError::NestedCompression)
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut buf = BytesMut::from(&[3u8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut buf, MAX_FRAME_BYTES),
            Err(FrameError::Malformed(_))
        ));
    }
}
