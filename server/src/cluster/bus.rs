//! The bus codec: how a batch of hub forwards (events, signals, ephemeral frames) travels
//! between nodes as one pub/sub message. Pure: bytes in, forwards out; a malformed message
//! is refused whole with a [`BusError`].
//!
//! Layout per item: kind `u8`, recipient count `u32`, recipients `u64`…, except `u64`,
//! payload length `u32`, payload (a protobuf event or frame, or a signal's frame bytes).
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use natter_protocol::pb;
use natter_protocol::UserId;
use prost::Message as _;

use crate::session::hub::Forward;

/// Why a bus message was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum BusError {
    /// The message ends inside an item.
    #[error("truncated bus message")]
    Truncated,
    /// An item kind this node does not know.
    #[error("unknown bus item kind {0}")]
    UnknownKind(u8),
    /// An item's payload is not valid protobuf.
    #[error("bad payload: {0}")]
    Payload(#[from] prost::DecodeError),
}

const KIND_EVENT: u8 = 1;
const KIND_SIGNAL: u8 = 2;
const KIND_EPHEMERAL: u8 = 3;

/// Append one forward for `to` to a bus message.
pub(super) fn encode(out: &mut Vec<u8>, f: &Forward, to: &[UserId]) {
    let (kind, except, payload): (u8, u64, Bytes) = match f {
        Forward::Event(_, ev) => (KIND_EVENT, 0, Bytes::from(ev.encode_to_vec())),
        Forward::Signal(_, frame) => (KIND_SIGNAL, 0, frame.clone()),
        Forward::Ephemeral(_, except, frame) => (KIND_EPHEMERAL, except.0, Bytes::from(frame.encode_to_vec())),
    };
    out.put_u8(kind);
    out.put_u32(to.len() as u32);
    for u in to {
        out.put_u64(u.0);
    }
    out.put_u64(except);
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
}

/// Read a bus message back into forwards. A malformed message is refused whole.
pub(super) fn decode(mut b: &[u8]) -> Result<Vec<Forward>, BusError> {
    let mut out = Vec::new();
    let need = |b: &[u8], n: usize| {
        if b.remaining() < n {
            Err(BusError::Truncated)
        } else {
            Ok(())
        }
    };
    while b.has_remaining() {
        need(b, 5)?;
        let kind = b.get_u8();
        let n = b.get_u32() as usize;
        need(b, n.saturating_mul(8))?;
        let to: Vec<UserId> = (0..n).map(|_| UserId(b.get_u64())).collect();
        need(b, 12)?;
        let except = UserId(b.get_u64());
        let len = b.get_u32() as usize;
        need(b, len)?;
        let payload = Bytes::copy_from_slice(&b[..len]);
        b.advance(len);
        out.push(match kind {
            KIND_EVENT => Forward::Event(to, Arc::new(pb::ConversationEvent::decode(payload)?)),
            KIND_SIGNAL => Forward::Signal(to, payload),
            KIND_EPHEMERAL => Forward::Ephemeral(to, except, Arc::new(pb::Frame::decode(payload)?)),
            k => return Err(BusError::UnknownKind(k)),
        });
    }
    Ok(out)
}

/// A search message: (conversation, committed seq) pairs, `u64` each.
pub(super) fn encode_positions(at: &std::collections::HashMap<u64, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(at.len() * 16);
    for (conv, seq) in at {
        out.put_u64(*conv);
        out.put_u64(*seq);
    }
    out
}

/// Read a search message back. A malformed message is refused whole.
pub(super) fn decode_positions(mut b: &[u8]) -> Result<Vec<(u64, u64)>, BusError> {
    if b.len() % 16 != 0 {
        return Err(BusError::Truncated);
    }
    let mut out = Vec::with_capacity(b.len() / 16);
    while b.has_remaining() {
        out.push((b.get_u64(), b.get_u64()));
    }
    Ok(out)
}

pub(super) fn recipients(f: &Forward) -> &[UserId] {
    match f {
        Forward::Event(to, _) | Forward::Signal(to, _) | Forward::Ephemeral(to, _, _) => to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_positions_round_trip_and_refuse_truncation() {
        let at = std::collections::HashMap::from([(5, 9), (7, 1)]);
        let mut back = decode_positions(&encode_positions(&at)).unwrap();
        back.sort();
        assert_eq!(back, vec![(5, 9), (7, 1)]);
        assert_eq!(decode_positions(&encode_positions(&at)[..20]), Err(BusError::Truncated));
    }

    #[test]
    fn bus_messages_round_trip_and_refuse_truncation() {
        let ev = Arc::new(pb::ConversationEvent {
            conversation_id: 5,
            seq: 9,
            ..Default::default()
        });
        let items = [
            Forward::Event(vec![UserId(1), UserId(2)], ev.clone()),
            Forward::Signal(vec![UserId(3)], Bytes::from_static(b"signal")),
            Forward::Ephemeral(vec![UserId(4)], UserId(1), Arc::new(pb::Frame::default())),
        ];
        let mut body = Vec::new();
        for f in &items {
            encode(&mut body, f, recipients(f));
        }
        let back = decode(&body).unwrap();
        assert_eq!(back.len(), 3);
        match &back[0] {
            Forward::Event(to, e) => assert_eq!((to.clone(), e.seq), (vec![UserId(1), UserId(2)], 9)),
            other => panic!("{other:?}"),
        }
        match &back[2] {
            Forward::Ephemeral(to, except, _) => assert_eq!((to.clone(), *except), (vec![UserId(4)], UserId(1))),
            other => panic!("{other:?}"),
        }
        let mut first = Vec::new();
        encode(&mut first, &items[0], recipients(&items[0]));
        for cut in 1..first.len() {
            assert!(decode(&body[..cut]).is_err(), "a message cut at {cut} was accepted");
        }
    }
}
