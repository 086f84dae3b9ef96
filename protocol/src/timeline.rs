//! Folds a conversation's events into the messages an app shows: current text, edited and
//! deleted flags, reactions with counts and who reacted. Pure and order-driven: feed events
//! in seq order (as [`crate::ClientSession`] delivers them, or from history pages), in the
//! app-facing shape ([`crate::client::model::ConversationEvent`]) every binding hands out.
use std::collections::{BTreeMap, BTreeSet};

use crate::client::model::{Attachment, ConversationEvent, EventBody, Message};
use crate::{Seq, UserId};

/// The username shown for the sender of an anonymised message (PROTOCOL.md §5.16).
pub const DELETED_USER: &str = "deleted-user";

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
    /// Its files (none once deleted).
    pub attachments: Vec<Attachment>,
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
    removed_through: Seq,
}

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one event. Changes to messages this timeline has not seen are ignored.
    /// Returns the seq of the message the event created or changed, if this timeline
    /// holds it (what a view has to redraw).
    pub fn apply(&mut self, ev: &ConversationEvent) -> Option<Seq> {
        let target = match &ev.body {
            EventBody::UserErased { user_id, anonymised } => {
                self.erase_user(UserId(*user_id), *anonymised);
                return None;
            }
            EventBody::Message { .. } | EventBody::Erased { message: true } => Seq(ev.seq),
            EventBody::MessageEdited { target_seq, .. }
            | EventBody::MessageDeleted { target_seq }
            | EventBody::Reaction { target_seq, .. } => Seq(*target_seq),
            _ => return None,
        };
        if target <= self.removed_through {
            // Retention removed it (an older page arriving late).
            return None;
        }
        match &ev.body {
            EventBody::Message {
                text,
                reply_to_seq,
                attachments,
                ..
            } => {
                self.messages.insert(
                    target,
                    MessageView {
                        seq: target,
                        sender: UserId(ev.sender_user_id),
                        sender_username: ev.sender_username.clone(),
                        text: text.clone(),
                        reply_to: Seq(*reply_to_seq),
                        attachments: attachments.clone(),
                        server_time_ms: ev.server_time_ms,
                        ..Default::default()
                    },
                );
            }
            EventBody::Erased { .. } => {
                self.messages.insert(
                    target,
                    MessageView {
                        seq: target,
                        server_time_ms: ev.server_time_ms,
                        deleted: true,
                        ..Default::default()
                    },
                );
            }
            EventBody::MessageEdited { text, .. } => {
                if let Some(m) = self.messages.get_mut(&target).filter(|m| !m.deleted) {
                    m.text = text.clone();
                    m.edited = true;
                }
            }
            EventBody::MessageDeleted { .. } => {
                if let Some(m) = self.messages.get_mut(&target) {
                    m.deleted = true;
                    m.text.clear();
                    m.reactions.clear();
                    m.attachments.clear();
                }
            }
            EventBody::Reaction { emoji, added, .. } => {
                if let Some(m) = self.messages.get_mut(&target).filter(|m| !m.deleted) {
                    let who = UserId(ev.sender_user_id);
                    if *added {
                        m.reactions.entry(emoji.clone()).or_default().insert(who);
                    } else if let Some(users) = m.reactions.get_mut(emoji) {
                        users.remove(&who);
                        if users.is_empty() {
                            m.reactions.remove(emoji);
                        }
                    }
                }
            }
            _ => {}
        }
        self.messages.contains_key(&target).then_some(target)
    }

    /// A user's account was deleted (PROTOCOL.md §5.16): their messages become tombstones
    /// (or, `anonymised`, stay under "deleted-user" with user id 0) and their reactions go.
    /// Every message may have changed: redraw them all.
    pub fn erase_user(&mut self, user: UserId, anonymised: bool) {
        for m in self.messages.values_mut() {
            for users in m.reactions.values_mut() {
                users.remove(&user);
            }
            m.reactions.retain(|_, users| !users.is_empty());
            if m.sender != user {
                continue;
            }
            m.sender = UserId(0);
            m.sender_username = if anonymised { DELETED_USER.into() } else { String::new() };
            if !anonymised {
                m.deleted = true;
                m.text.clear();
                m.attachments.clear();
                m.reactions.clear();
            }
        }
    }

    /// Retention removed the conversation's events up to `through` (PROTOCOL.md §5.17: a
    /// history page's `removed_through`, or the `HistoryRemoved` event): the messages held
    /// up to there go, and the view shows one tombstone before the first message left.
    /// Never moves back. Returns whether anything changed (redraw).
    pub fn remove_through(&mut self, through: Seq) -> bool {
        if through <= self.removed_through {
            return false;
        }
        self.removed_through = through;
        self.messages = self.messages.split_off(&through.next());
        true
    }

    /// Events up to here were removed by retention (`Seq(0)`: none): draw a tombstone
    /// above the oldest message when it is not 0.
    pub fn removed_through(&self) -> Seq {
        self.removed_through
    }

    /// One message as the app shows it.
    pub fn message(&self, seq: Seq) -> Option<Message> {
        self.messages.get(&seq).map(Message::from)
    }

    /// Every message as the app shows it, oldest first.
    pub fn all(&self) -> Vec<Message> {
        self.messages.values().map(Message::from).collect()
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

    fn ev(seq: u64, user: u64, body: EventBody) -> ConversationEvent {
        ConversationEvent {
            conversation_id: 1,
            seq,
            sender_user_id: user,
            sender_username: format!("u{user}"),
            sender_device_id: 1,
            server_time_ms: seq * 10,
            body,
        }
    }

    fn msg(text: &str) -> EventBody {
        EventBody::Message {
            client_msg_id: "x".into(),
            text: text.into(),
            reply_to_seq: 0,
            attachments: Vec::new(),
            mentions: Vec::new(),
            mention_here: false,
        }
    }

    #[test]
    fn a_range_removed_by_retention_leaves_the_messages_after_it() {
        let mut t = Timeline::new();
        for seq in 1..=5 {
            t.apply(&ev(seq, 1, msg(&format!("m{seq}"))));
        }
        assert!(t.remove_through(Seq(3)));
        assert_eq!(t.removed_through(), Seq(3));
        let left: Vec<u64> = t.messages().map(|m| m.seq.0).collect();
        assert_eq!(left, [4, 5]);
        assert!(!t.remove_through(Seq(2)), "it never moves back");
        assert_eq!(
            t.apply(&ev(2, 1, msg("late page"))),
            None,
            "a removed message stays removed"
        );
        assert_eq!(t.messages().count(), 2);
    }

    #[test]
    fn edits_deletes_and_reactions_fold_in_order() {
        let mut t = Timeline::new();
        assert_eq!(t.apply(&ev(1, 1, msg("helo"))), Some(Seq(1)));
        t.apply(&ev(2, 2, msg("bye")));
        t.apply(&ev(
            3,
            1,
            EventBody::MessageEdited {
                target_seq: 1,
                text: "hello".into(),
            },
        ));
        let react = |seq, user, emoji: &str, added| {
            ev(
                seq,
                user,
                EventBody::Reaction {
                    target_seq: 1,
                    emoji: emoji.into(),
                    added,
                },
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
        t.apply(&ev(8, 2, EventBody::MessageDeleted { target_seq: 2 }));
        let m1 = t.get(Seq(1)).unwrap();
        assert_eq!((m1.text.as_str(), m1.edited), ("hello", true));
        assert_eq!(m1.reaction_counts(), vec![("👍".to_string(), 2)]);
        let m2 = t.get(Seq(2)).unwrap();
        assert!(m2.deleted && m2.text.is_empty());
        // An edit after deletion changes nothing.
        t.apply(&ev(
            9,
            2,
            EventBody::MessageEdited {
                target_seq: 2,
                text: "back".into(),
            },
        ));
        assert!(t.get(Seq(2)).unwrap().text.is_empty());
        // A change to a message this timeline never saw changes nothing.
        let unknown = ev(10, 2, EventBody::MessageDeleted { target_seq: 99 });
        assert_eq!(t.apply(&unknown), None);
        assert_eq!(t.apply(&ev(11, 2, EventBody::Renamed { name: "x".into() })), None);
        assert_eq!(t.apply(&ev(12, 2, EventBody::Unknown)), None);
    }

    #[test]
    fn the_app_record_of_a_message_lists_reactions_with_who() {
        let mut t = Timeline::new();
        t.apply(&ev(1, 1, msg("hi")));
        for (seq, user, emoji) in [(2, 2, "👍"), (3, 3, "👍"), (4, 3, "🎉")] {
            t.apply(&ev(
                seq,
                user,
                EventBody::Reaction {
                    target_seq: 1,
                    emoji: emoji.into(),
                    added: true,
                },
            ));
        }
        let m = t.message(Seq(1)).expect("message 1");
        assert_eq!((m.seq, m.sender_user_id, m.sender_username.as_str()), (1, 1, "u1"));
        assert_eq!((m.text.as_str(), m.server_time_ms), ("hi", 10));
        let r: Vec<(&str, u32, &[u64])> = m
            .reactions
            .iter()
            .map(|r| (r.emoji.as_str(), r.count, r.user_ids.as_slice()))
            .collect();
        assert_eq!(r, vec![("👍", 2, &[2u64, 3][..]), ("🎉", 1, &[3u64][..])]);
        assert_eq!(t.all(), vec![m]);
        assert_eq!(t.message(Seq(2)), None, "a reaction is no message");
    }
}
