//! Folds a conversation's events into the messages an app shows: current text, edited and
//! deleted flags, reactions with counts and who reacted. Pure and order-driven: feed events
//! in seq order (as [`crate::ClientSession`] delivers them, or from history pages).
use std::collections::{BTreeMap, BTreeSet};

use crate::pb::{self, conversation_event::Body};
use crate::{Seq, UserId};

/// One message as it stands after every event so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageView {
    /// Its seq.
    pub seq: Seq,
    /// Who sent it.
    pub sender: UserId,
    /// Sender's username.
    pub sender_username: String,
    /// Current text (empty once deleted).
    pub text: String,
    /// Replied-to seq, 0 for none.
    pub reply_to: Seq,
    /// Commit time of the original.
    pub server_time_ms: u64,
    /// Edited at least once.
    pub edited: bool,
    /// Deleted (a tombstone).
    pub deleted: bool,
    /// Emoji → users who reacted with it.
    pub reactions: BTreeMap<String, BTreeSet<UserId>>,
}

impl MessageView {
    /// Reactions as (emoji, count), most used first.
    pub fn reaction_counts(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self.reactions.iter().map(|(e, u)| (e.clone(), u.len())).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// The messages of one conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    messages: BTreeMap<Seq, MessageView>,
}

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one event. Changes to messages this timeline has not seen are ignored.
    /// Returns the seq of the message the event created or changed, if this timeline
    /// holds it (what a view has to redraw).
    pub fn apply(&mut self, ev: &pb::ConversationEvent) -> Option<Seq> {
        let body = ev.body.as_ref()?;
        let target = match body {
            Body::Message(_) => Seq(ev.seq),
            Body::MessageEdited(e) => Seq(e.target_seq),
            Body::MessageDeleted(d) => Seq(d.target_seq),
            Body::Reaction(r) => Seq(r.target_seq),
            _ => return None,
        };
        match body {
            Body::Message(m) => {
                let b = m.body.clone().unwrap_or_default();
                self.messages.insert(
                    Seq(ev.seq),
                    MessageView {
                        seq: Seq(ev.seq),
                        sender: UserId(ev.sender_user_id),
                        sender_username: ev.sender_username.clone(),
                        text: b.text,
                        reply_to: Seq(b.reply_to_seq),
                        server_time_ms: ev.server_time_ms,
                        ..Default::default()
                    },
                );
            }
            Body::MessageEdited(e) => {
                if let Some(m) = self.messages.get_mut(&Seq(e.target_seq)).filter(|m| !m.deleted) {
                    m.text = e.text.clone();
                    m.edited = true;
                }
            }
            Body::MessageDeleted(d) => {
                if let Some(m) = self.messages.get_mut(&Seq(d.target_seq)) {
                    m.deleted = true;
                    m.text.clear();
                    m.reactions.clear();
                }
            }
            Body::Reaction(r) => {
                if let Some(m) = self.messages.get_mut(&Seq(r.target_seq)).filter(|m| !m.deleted) {
                    let who = UserId(ev.sender_user_id);
                    if r.added {
                        m.reactions.entry(r.emoji.clone()).or_default().insert(who);
                    } else if let Some(users) = m.reactions.get_mut(&r.emoji) {
                        users.remove(&who);
                        if users.is_empty() {
                            m.reactions.remove(&r.emoji);
                        }
                    }
                }
            }
            _ => {}
        }
        self.messages.contains_key(&target).then_some(target)
    }

    /// One message.
    pub fn get(&self, seq: Seq) -> Option<&MessageView> {
        self.messages.get(&seq)
    }

    /// All messages in order.
    pub fn messages(&self) -> impl Iterator<Item = &MessageView> {
        self.messages.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, user: u64, body: Body) -> pb::ConversationEvent {
        pb::ConversationEvent {
            conversation_id: 1,
            seq,
            sender_user_id: user,
            body: Some(body),
            ..Default::default()
        }
    }

    fn msg(text: &str) -> Body {
        Body::Message(pb::MessageEvent {
            client_msg_id: "x".into(),
            body: Some(pb::MessageBody {
                text: text.into(),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn edits_deletes_and_reactions_fold_in_order() {
        let mut t = Timeline::new();
        assert_eq!(t.apply(&ev(1, 1, msg("helo"))), Some(Seq(1)));
        t.apply(&ev(2, 2, msg("bye")));
        t.apply(&ev(
            3,
            1,
            Body::MessageEdited(pb::MessageEdited {
                target_seq: 1,
                text: "hello".into(),
            }),
        ));
        let react = |seq, user, emoji: &str, added| {
            ev(
                seq,
                user,
                Body::Reaction(pb::ReactionChanged {
                    target_seq: 1,
                    emoji: emoji.into(),
                    added,
                }),
            )
        };
        assert_eq!(
            t.apply(&react(4, 2, "👍", true)),
            Some(Seq(1)),
            "a reaction changes message 1"
        );
        t.apply(&react(5, 3, "👍", true));
        t.apply(&react(6, 3, "❤️", true));
        t.apply(&react(7, 3, "❤️", false));
        t.apply(&ev(8, 2, Body::MessageDeleted(pb::MessageDeleted { target_seq: 2 })));
        let m1 = t.get(Seq(1)).unwrap();
        assert_eq!((m1.text.as_str(), m1.edited), ("hello", true));
        assert_eq!(m1.reaction_counts(), vec![("👍".to_string(), 2)]);
        let m2 = t.get(Seq(2)).unwrap();
        assert!(m2.deleted && m2.text.is_empty());
        // An edit after deletion changes nothing.
        t.apply(&ev(
            9,
            2,
            Body::MessageEdited(pb::MessageEdited {
                target_seq: 2,
                text: "back".into(),
            }),
        ));
        assert!(t.get(Seq(2)).unwrap().text.is_empty());
        // A change to a message this timeline never saw changes nothing.
        let unknown = ev(10, 2, Body::MessageDeleted(pb::MessageDeleted { target_seq: 99 }));
        assert_eq!(t.apply(&unknown), None);
        assert_eq!(
            t.apply(&ev(11, 2, Body::Renamed(pb::Renamed { name: "x".into() }))),
            None
        );
    }
}
