//! What an encrypting SDK learns about conversations on the way to the app (PROTOCOL.md
//! §12.3, §12.5): which are encrypted, each one's device list as its events say it, the
//! list fixed from a `DEVICE_MISMATCH` refusal; and the events it handed on
//! undecryptable, to open when their keys arrive (§12.9, §12.11). Also the shapes at the
//! edge: whether an event is sealed, and what an opened one becomes for the app.
use std::collections::{BTreeMap, HashMap};

use super::Crypto;
use crate::pb::{self, conversation_event::Body};
use crate::ConversationId;

/// Undecryptable events kept (the newest, by conversation and seq) to open again when
/// their keys arrive; older ones open when the app reads them from history again.
pub const UNOPENED_KEPT: usize = 1_000;

/// A message event with an envelope.
pub fn is_sealed(ev: &pb::ConversationEvent) -> bool {
    matches!(&ev.body, Some(Body::Message(m)) if m.body.as_ref().is_some_and(|b| b.encrypted.is_some()))
}

/// What an opened envelope becomes for the app: the message, or the change it carries.
/// The mentions stay those the server committed (outside the ciphertext, PROTOCOL.md
/// §13.2), which are what notified.
pub fn opened(mut ev: pb::ConversationEvent, content: pb::SealedContent) -> pb::ConversationEvent {
    let (client_msg_id, mentions, mention_here) = match &ev.body {
        Some(Body::Message(m)) => (
            m.client_msg_id.clone(),
            m.body.as_ref().map(|b| b.mentions.clone()).unwrap_or_default(),
            m.body.as_ref().is_some_and(|b| b.mention_here),
        ),
        _ => (String::new(), Vec::new(), false),
    };
    ev.body = Some(match content.change {
        Some(pb::sealed_content::Change::Edit(e)) => Body::MessageEdited(e),
        Some(pb::sealed_content::Change::Delete(d)) => Body::MessageDeleted(d),
        Some(pb::sealed_content::Change::Reaction(r)) => Body::Reaction(r),
        None => {
            let mut body = content.body.unwrap_or_default();
            body.encrypted = None;
            body.mentions = mentions;
            body.mention_here = mention_here;
            Body::Message(pb::MessageEvent {
                client_msg_id,
                body: Some(body),
            })
        }
    });
    ev
}

/// The encrypted conversations an SDK heard of.
#[derive(Debug, Default)]
pub struct Conversations {
    /// The devices of each encrypted conversation as this device last learned them.
    lists: HashMap<ConversationId, Vec<pb::DeviceKeys>>,
    /// Whether each conversation this device heard of is encrypted.
    encrypted: HashMap<ConversationId, bool>,
    /// Message events the app got undecryptable, by (conversation, seq).
    unopened: BTreeMap<(u64, u64), pb::ConversationEvent>,
}

impl Conversations {
    /// Learn from an event on its way to the app: a creation's device list, a device
    /// list change, and that a conversation with a sealed message is encrypted.
    pub fn learn(&mut self, ev: &pb::ConversationEvent) {
        let conv = ConversationId(ev.conversation_id);
        match &ev.body {
            Some(Body::Created(c)) if c.encrypted => {
                self.encrypted.insert(conv, true);
                self.lists.insert(conv, c.devices.clone());
            }
            Some(Body::DevicesChanged(d)) => {
                self.encrypted.insert(conv, true);
                // A change to a list this device never learned whole (it joined the
                // conversation's device list later, e.g. as a new device) stays unknown:
                // the whole list comes from the server when it is needed.
                let Some(list) = self.lists.get_mut(&conv) else {
                    return;
                };
                list.retain(|k| !(k.user_id == d.user_id && d.removed.contains(&k.device_id)));
                for k in &d.added {
                    if !list
                        .iter()
                        .any(|x| (x.user_id, x.device_id) == (k.user_id, k.device_id))
                    {
                        list.push(k.clone());
                    }
                }
            }
            _ if is_sealed(ev) => {
                self.encrypted.insert(conv, true);
            }
            _ => {}
        }
    }

    /// Whether a conversation is encrypted, as the server listed it.
    pub fn note(&mut self, conv: ConversationId, encrypted: bool) {
        self.encrypted.insert(conv, encrypted);
    }

    /// Whether a conversation is encrypted, if this device knows.
    pub fn is_encrypted(&self, conv: ConversationId) -> Option<bool> {
        self.encrypted.get(&conv).copied()
    }

    /// The conversations this device knows to be encrypted.
    pub fn encrypted_ids(&self) -> Vec<ConversationId> {
        let mut ids: Vec<ConversationId> = self.encrypted.iter().filter(|(_, e)| **e).map(|(c, _)| *c).collect();
        ids.sort();
        ids
    }

    /// A conversation's devices as learned, if they were.
    pub fn devices(&self, conv: ConversationId) -> Option<&[pb::DeviceKeys]> {
        self.lists.get(&conv).map(Vec::as_slice)
    }

    /// A conversation's devices as the server listed them (its members' devices).
    pub fn set_devices(&mut self, conv: ConversationId, devices: Vec<pb::DeviceKeys>) {
        self.lists.insert(conv, devices);
    }

    /// The sending device's keys of a message, from its conversation's list.
    pub fn sender(&self, ev: &pb::ConversationEvent) -> Option<pb::DeviceKeys> {
        let who = (ev.sender_user_id, ev.sender_device_id);
        self.lists
            .get(&ConversationId(ev.conversation_id))?
            .iter()
            .find(|d| (d.user_id, d.device_id) == who)
            .cloned()
    }

    /// The devices a send to `conv` covered, corrected as the server's refusal says:
    /// extra and stale ones out, missing ones and the stale ones' new keys in. Kept as
    /// the conversation's list.
    pub fn fix_devices(
        &mut self,
        conv: ConversationId,
        devices: &[pb::DeviceKeys],
        m: &pb::DeviceMismatch,
    ) -> Vec<pb::DeviceKeys> {
        let same = |a: (u64, u64), d: &pb::DeviceKeys| a == (d.user_id, d.device_id);
        let mut fixed: Vec<pb::DeviceKeys> = devices
            .iter()
            .filter(|d| {
                let gone = m.extra.iter().any(|r| same((r.user_id, r.device_id), d));
                let stale = m.stale.iter().any(|k| same((k.user_id, k.device_id), d));
                !gone && !stale
            })
            .cloned()
            .collect();
        fixed.extend(m.missing.iter().cloned());
        fixed.extend(m.stale.iter().cloned());
        self.lists.insert(conv, fixed.clone());
        fixed
    }

    /// Keep an event the app got undecryptable (the newest [`UNOPENED_KEPT`]).
    pub fn keep_unopened(&mut self, ev: pb::ConversationEvent) {
        self.unopened.insert((ev.conversation_id, ev.seq), ev);
        while self.unopened.len() > UNOPENED_KEPT {
            self.unopened.pop_first();
        }
    }

    /// The kept undecryptable events whose keys `crypto` holds now, opened (they leave
    /// the kept ones), by conversation and seq.
    pub fn reopen(&mut self, crypto: &mut Crypto) -> Vec<pb::ConversationEvent> {
        let ready: Vec<(u64, u64)> = self
            .unopened
            .iter()
            .filter(|(_, ev)| crypto.has_message_key(ev))
            .map(|(k, _)| *k)
            .collect();
        ready
            .into_iter()
            .filter_map(|k| {
                let ev = self.unopened.remove(&k)?;
                // A kept key: no sender keys needed, no state changed.
                let content = crypto.open(&ev, None).ok()?;
                Some(opened(ev, content))
            })
            .collect()
    }
}
