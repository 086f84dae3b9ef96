//! The WebSocket mapping (PROTOCOL.md §3.6): everything a QUIC connection carries on its
//! control stream, its delivery streams and its datagrams travels in binary WebSocket
//! messages, each `channel (varint) ‖ payload`. Channel 0 is the control stream, 1 carries
//! one datagram per message, 2 and up are server-opened delivery streams; an empty payload
//! on a delivery channel finishes that stream. Shared by the server and every client so the
//! two ends cannot disagree.
use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

/// The WebSocket subprotocol clients must offer.
pub const SUBPROTOCOL: &str = "natter.v1";

/// Where a WebSocket message belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The control stream (both directions).
    Control,
    /// One whole datagram (both directions; ephemeral, may be dropped by either end).
    Datagram,
    /// Server-opened delivery stream number `n` (n ≥ 1; server → client only).
    Stream(u64),
}

impl Channel {
    fn number(self) -> u64 {
        match self {
            Channel::Control => 0,
            Channel::Datagram => 1,
            Channel::Stream(n) => n.saturating_add(1),
        }
    }
}

/// A WebSocket message that does not follow §3.6.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// No channel number, or one that is not a valid varint.
    #[error("websocket message without a valid channel number")]
    BadChannel,
}

/// One WebSocket message: the channel number, then the payload.
pub fn encode(channel: Channel, payload: &[u8]) -> Bytes {
    let n = channel.number();
    let mut out = BytesMut::with_capacity(encoded_len_varint(n) + payload.len());
    encode_varint(n, &mut out);
    out.put_slice(payload);
    out.freeze()
}

/// Split a WebSocket message into its channel and payload.
pub fn decode(mut msg: &[u8]) -> Result<(Channel, &[u8]), MuxError> {
    let n = decode_varint(&mut msg).map_err(|_| MuxError::BadChannel)?;
    let channel = match n {
        0 => Channel::Control,
        1 => Channel::Datagram,
        n => Channel::Stream(n - 1),
    };
    Ok((channel, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_round_trips_and_bad_prefixes_are_typed_errors() {
        for ch in [
            Channel::Control,
            Channel::Datagram,
            Channel::Stream(1),
            Channel::Stream(300),
        ] {
            let msg = encode(ch, b"abc");
            assert_eq!(decode(&msg), Ok((ch, &b"abc"[..])));
        }
        assert_eq!(encode(Channel::Stream(1), b"")[..], [2]);
        assert_eq!(decode(&[]), Err(MuxError::BadChannel));
        assert_eq!(decode(&[0x80]), Err(MuxError::BadChannel));
    }
}
