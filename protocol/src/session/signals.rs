//! Live signals (PROTOCOL.md §5.10–§5.12): receipts and the message status derived from them,
//! presence heartbeats, and typing over datagrams with a control-stream fallback. None of
//! it is part of a conversation's order; all of it is loss-tolerant or re-sent.
use super::*;

/// Where one of this user's messages stands with the other members (PROTOCOL.md §5.10).
/// Also an app-facing record ([`crate::client::model`]): JS `{ state: "read", … }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "camelCase")
)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct MessageStatus {
    /// The summary mark: sent (durable), delivered to all, read by all.
    pub state: DeliveryState,
    /// Other members with a device that received it.
    pub delivered: u32,
    /// Other members who read it.
    pub read: u32,
    /// Other members in the conversation.
    pub recipients: u32,
}

/// ✓ sent, ✓✓ delivered, read. JS: `"sent"`, `"delivered"`, `"read"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum DeliveryState {
    /// Durable on the server.
    Sent,
    /// Reached a device of every other member.
    Delivered,
    /// Read by every other member.
    Read,
}

impl ClientSession {
    /// Where this user's message `seq` stands with the other members; `None` where no
    /// receipts are kept (channels, unknown conversations).
    pub fn message_status(&self, conv: ConversationId, seq: Seq) -> Option<MessageStatus> {
        let me = self.identity.as_ref()?.0;
        let st = self.convs.get(&conv)?;
        let others: Vec<&(Seq, Seq)> = st.receipts.iter().filter(|(u, _)| **u != me).map(|(_, c)| c).collect();
        if others.is_empty() {
            return None;
        }
        let recipients = others.len() as u32;
        let delivered = others.iter().filter(|c| c.0 >= seq).count() as u32;
        let read = others.iter().filter(|c| c.1 >= seq).count() as u32;
        let state = if read == recipients {
            DeliveryState::Read
        } else if delivered == recipients {
            DeliveryState::Delivered
        } else {
            DeliveryState::Sent
        };
        Some(MessageStatus {
            state,
            delivered,
            read,
            recipients,
        })
    }

    /// Tell the conversation we are typing. Renewals inside half the indicator's lifetime are
    /// dropped here (the others' indicators are still showing). Goes as a datagram where the
    /// transport has them, else on the control stream; a refusal comes back as
    /// [`SessionEvent::TypingRejected`].
    pub fn typing(&mut self, now: Millis, conversation_id: ConversationId) {
        self.now = now;
        if !self.ready() {
            return;
        }
        let renew_after = self.delay(Timer::TypingRenew);
        if self
            .typing_sent
            .get(&conversation_id)
            .is_some_and(|t| now < t.plus(renew_after))
        {
            return;
        }
        self.typing_sent.insert(conversation_id, now);
        let op = Op::Typing(pb::Typing {
            conversation_id: conversation_id.0,
        });
        if self.datagrams_ok {
            let frame = pb::Frame {
                kind: Some(Kind::Request(pb::Request { id: 0, op: Some(op) })),
            };
            self.datagrams
                .push_back(Bytes::from(prost::Message::encode_to_vec(&frame)));
        } else {
            let id = self.alloc_id();
            self.put_request(id, op, Purpose::Typing(conversation_id));
        }
    }

    /// Report this device as online or away (sent at once and with every heartbeat).
    pub fn set_presence(&mut self, now: Millis, state: pb::PresenceState) {
        self.now = now;
        self.presence = state;
        if self.ready() {
            self.send_heartbeat();
        }
    }

    /// A datagram from the server.
    pub fn handle_datagram(&mut self, now: Millis, data: &[u8]) {
        self.now = now;
        // Datagrams are loss-tolerant extras: anything undecodable is dropped.
        if let Ok(pb::Frame {
            kind: Some(Kind::Signal(sig)),
        }) = <pb::Frame as prost::Message>::decode(data)
        {
            self.on_signal(sig);
        }
    }

    pub(super) fn send_heartbeat(&mut self) {
        let id = self.alloc_id();
        self.put_request(
            id,
            Op::Heartbeat(pb::Heartbeat {
                state: self.presence as i32,
            }),
            Purpose::Ack,
        );
        let due = self.next_heartbeat();
        if let Phase::Ready { next_heartbeat } = &mut self.phase {
            *next_heartbeat = due;
        }
    }

    /// When the heartbeat after one sent now is due: never where the transport keeps the
    /// connection alive (the server counts a device while its connection lives).
    pub(super) fn next_heartbeat(&self) -> Option<super::Millis> {
        (!self.config.transport_keeps_alive).then(|| self.deadline(Timer::Heartbeat))
    }

    pub(super) fn on_signal(&mut self, sig: pb::Signal) {
        match sig.kind {
            Some(pb::signal::Kind::Receipt(r)) => self.on_receipt(r),
            Some(pb::signal::Kind::Presence(p)) => self.events.push_back(SessionEvent::Presence(p)),
            Some(pb::signal::Kind::Typing(t)) => {
                let key = (ConversationId(t.conversation_id), UserId(t.user_id));
                self.typing_shown.insert(key, self.now.plus(u64::from(t.expires_in_ms)));
                self.events.push_back(SessionEvent::Typing {
                    conversation_id: key.0,
                    user_id: key.1,
                    username: t.username,
                });
            }
            Some(pb::signal::Kind::Rejected(r)) => {
                let error = ServerError::from(pb::Error {
                    code: r.code,
                    message: "typing refused".into(),
                    ..Default::default()
                });
                let conversation_id = ConversationId(r.conversation_id);
                self.events
                    .push_back(SessionEvent::TypingRejected { conversation_id, error });
            }
            Some(pb::signal::Kind::Upload(u)) => self.events.push_back(SessionEvent::UploadProgress(u)),
            Some(pb::signal::Kind::KeyCounts(c)) => {
                // Every session of the user hears it; only the device it is about acts.
                let mine = self.identity.as_ref().is_some_and(|i| i.2 .0 == c.device_id);
                if mine {
                    self.events.push_back(SessionEvent::KeyCounts(c));
                }
            }
            Some(pb::signal::Kind::PushRemoved(r)) => self.events.push_back(SessionEvent::PushRemoved(r)),
            Some(pb::signal::Kind::ProfileChanged(p)) => self.events.push_back(SessionEvent::ProfileChanged(p)),
            Some(pb::signal::Kind::TokenExpiring(t)) => self.events.push_back(SessionEvent::TokenNeeded {
                expires_at_ms: t.expires_at_ms,
            }),
            Some(pb::signal::Kind::ToDevice(t)) => {
                let mine = self.identity.as_ref().is_some_and(|i| i.2 .0 == t.to_device_id);
                if mine {
                    self.events.push_back(SessionEvent::ToDevice(t));
                }
            }
            None => {}
        }
    }

    /// This device's own delivery ack was accepted: the user's delivered cursor is at
    /// least `seq`, as the `ReceiptUpdate` the server sends the user's other devices says —
    /// which it sends only when the cursor moved, so nothing happens here when another
    /// device's ack already took it that far.
    pub(super) fn own_delivered(&mut self, conv: ConversationId, seq: Seq) {
        let Some(me) = self.identity.as_ref().map(|i| i.0) else {
            return;
        };
        let (delivered, read) = self
            .convs
            .get(&conv)
            .and_then(|st| st.receipts.get(&me))
            .map_or((Seq(0), Seq(0)), |c| *c);
        if delivered >= seq {
            return;
        }
        self.on_receipt(pb::ReceiptUpdate {
            conversation_id: conv.0,
            user_id: me.0,
            delivered_seq: seq.0,
            read_seq: read.0,
            unread_count: 0,
            last_seq: 0,
        });
    }

    pub(super) fn on_receipt(&mut self, r: pb::ReceiptUpdate) {
        let conv = ConversationId(r.conversation_id);
        let user = UserId(r.user_id);
        let me = self.identity.as_ref().map(|i| i.0);
        let Some(st) = self.convs.get_mut(&conv) else { return };
        let (delivered, read) = (Seq(r.delivered_seq), Seq(r.read_seq));
        if st.receipts.contains_key(&user) || me == Some(user) {
            let c = st.receipts.entry(user).or_default();
            c.0 = c.0.max(delivered);
            c.1 = c.1.max(read);
        }
        // Only an update that carries a count (last_seq > 0: the read cursor moved) says
        // anything about this user's unread messages.
        if me == Some(user) && r.last_seq > 0 {
            st.advance_read(read);
            st.set_unread(r.unread_count, Seq(r.last_seq));
            let (read_seq, unread_count) = (st.read, st.unread());
            self.events.push_back(SessionEvent::Unread {
                conversation_id: conv,
                read_seq,
                unread_count,
            });
        }
        self.events.push_back(SessionEvent::Receipt {
            conversation_id: conv,
            user_id: user,
            delivered_seq: delivered,
            read_seq: read,
        });
    }
}
