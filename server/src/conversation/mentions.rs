//! Who a message mentions (PROTOCOL.md §13.2), decided at commit: the sender's list, kept
//! to members; in plain text also every `@username` of a member; `@here` in a group or
//! channel. Pure: the shard calls it with the conversation it holds.
use std::collections::BTreeSet;

use natter_protocol::pb::{self, ConversationKind as Kind};
use natter_protocol::UserId;

use super::rules::Conv;

/// Most mentions a message keeps.
pub const MAX_MENTIONS: usize = 100;

/// Fill in `body.mentions` and `body.mention_here` for a message sent in `conv`.
pub(crate) fn resolve(conv: &Conv, body: &mut pb::MessageBody) {
    let mut ids: BTreeSet<u64> = body
        .mentions
        .iter()
        .copied()
        .filter(|id| conv.members.contains_key(&UserId(*id)))
        .collect();
    let mut here = body.mention_here;
    if body.encrypted.is_none() {
        for name in natter_protocol::mentions::at_names(&body.text) {
            if name == "here" {
                here = true;
            } else if let Some(m) = conv.members.values().find(|m| m.username == name) {
                ids.insert(m.user.0);
            }
        }
    }
    body.mentions = ids.into_iter().take(MAX_MENTIONS).collect();
    body.mention_here = here && matches!(conv.meta.kind, Kind::Group | Kind::Channel);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConversationMeta, MemberRecord};
    use natter_protocol::{ConversationId, Seq};

    fn conv(kind: Kind) -> Conv {
        let member = |id: u64, name: &str| {
            (
                UserId(id),
                MemberRecord {
                    user: UserId(id),
                    username: name.into(),
                    role: pb::Role::Member,
                    joined_seq: Seq(1),
                },
            )
        };
        Conv {
            meta: ConversationMeta {
                id: ConversationId(1),
                kind,
                name: "g".into(),
                created_ms: 0,
                deleted: false,
                encrypted: false,
                devices: Vec::new(),
                moderation: Default::default(),
                retention_secs: None,
            },
            members: [member(1, "alice"), member(2, "bob"), member(3, "carol.d")].into(),
            last_seq: Seq(1),
            last_time_ms: 0,
            last_sent: Default::default(),
            member_list: None,
        }
    }

    fn body(text: &str, mentions: &[u64]) -> pb::MessageBody {
        pb::MessageBody {
            text: text.into(),
            mentions: mentions.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn plain_text_mentions_members_by_at_name_and_keeps_the_senders_list_to_members() {
        let c = conv(Kind::Group);
        let mut b = body(
            "hi @Bob, @carol.d. and @nobody; mail@alice.example @@alice",
            &[1, 99, 1],
        );
        resolve(&c, &mut b);
        assert_eq!(
            b.mentions,
            vec![1, 2, 3],
            "alice from the list, bob and carol.d from the text"
        );
        assert!(!b.mention_here);
        let mut b = body("@here lunch?", &[]);
        resolve(&c, &mut b);
        assert!(b.mention_here);
        assert!(b.mentions.is_empty());
    }

    #[test]
    fn here_is_for_groups_and_sealed_text_is_never_read() {
        let mut b = body("@here", &[]);
        resolve(&conv(Kind::Direct), &mut b);
        assert!(!b.mention_here, "no @here in a direct conversation");
        let mut sealed = pb::MessageBody {
            mentions: vec![2, 42],
            encrypted: Some(pb::Envelope::default()),
            text: "@alice".into(),
            ..Default::default()
        };
        resolve(&conv(Kind::Direct), &mut sealed);
        assert_eq!(sealed.mentions, vec![2], "the sender's list, kept to members only");
    }
}
