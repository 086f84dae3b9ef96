//! Unit tests of the conversation rules: no store, no tasks, no clock.
use natter_protocol::pb::{self, conversation_event::Body, ConversationKind as Kind, ErrorCode, Role};
use natter_protocol::{ConversationId, DeviceId, Seq, UserId};

use super::{apply, apply_to_message, create, Conv, Target};
use crate::conversation::{Actor, MemberLimits, Mutation};
use crate::store::MessageState;

const LIMITS: MemberLimits = MemberLimits { group: 4, channel: 6 };
const NOW: u64 = 1_000;

fn actor(id: u64) -> Actor {
    Actor {
        user: UserId(id),
        username: format!("user{id}"),
        device: DeviceId(id * 10),
    }
}

fn others(ids: &[u64]) -> Vec<(UserId, String)> {
    ids.iter().map(|i| (UserId(*i), format!("user{i}"))).collect()
}

/// A conversation of `kind` created by user 1 with `members`.
fn conv(kind: Kind, members: &[u64]) -> Conv {
    create(
        ConversationId(7),
        &actor(1),
        kind,
        "room".into(),
        others(members),
        None,
        NOW,
    )
    .2
}

fn code<T: std::fmt::Debug>(r: Result<T, natter_protocol::ServerError>) -> ErrorCode {
    r.expect_err("refused").code
}

fn role(c: &Conv, user: u64) -> Option<Role> {
    c.members.get(&UserId(user)).map(|m| m.role)
}

fn send(text: &str, id: &str) -> Mutation {
    Mutation::Send {
        client_msg_id: id.into(),
        body: pb::MessageBody {
            text: text.into(),
            ..Default::default()
        },
    }
}

/// A reaction to `t` with `emoji` (or taking it back).
fn react(t: &Target, emoji: &str, remove: bool) -> Mutation {
    Mutation::React {
        target: Seq(t.event.seq),
        emoji: emoji.into(),
        remove,
    }
}

/// Apply a send and return the message as an edit/delete/react target.
fn message(c: &mut Conv, from: u64) -> Target {
    let (commit, _) = apply(c, &actor(from), send("hi", &format!("m{}", c.last_seq.0)), NOW, LIMITS).unwrap();
    Target {
        event: commit.event,
        state: MessageState::default(),
    }
}

#[test]
fn a_group_starts_at_seq_1_with_its_creator_as_owner() {
    let (commit, recipients, c) = create(
        ConversationId(7),
        &actor(1),
        Kind::Group,
        "g".into(),
        others(&[2, 3]),
        None,
        NOW,
    );
    assert_eq!(commit.event.seq, 1);
    assert_eq!(c.last_seq, Seq(1));
    assert_eq!(role(&c, 1), Some(Role::Owner));
    assert_eq!(role(&c, 2), Some(Role::Member));
    let mut r = recipients;
    r.sort();
    assert_eq!(r, vec![UserId(1), UserId(2), UserId(3)]);
    assert!(matches!(commit.event.body, Some(Body::Created(_))));
}

#[test]
fn a_direct_conversation_has_two_plain_members() {
    let c = conv(Kind::Direct, &[2]);
    assert_eq!(role(&c, 1), Some(Role::Member));
    assert_eq!(role(&c, 2), Some(Role::Member));
}

#[test]
fn the_creator_named_among_members_is_not_added_twice() {
    let c = conv(Kind::Group, &[1, 2, 2]);
    assert_eq!(c.members.len(), 2);
    assert_eq!(role(&c, 1), Some(Role::Owner));
}

#[test]
fn seqs_are_gap_free_across_mutations() {
    let mut c = conv(Kind::Group, &[2]);
    for expected in 2..6 {
        let (commit, _) = apply(&mut c, &actor(2), send("x", &format!("id{expected}")), NOW, LIMITS).unwrap();
        assert_eq!(commit.event.seq, expected);
        assert_eq!(c.last_seq, Seq(expected));
    }
}

#[test]
fn a_send_carries_its_idempotency_key_and_marks_the_sender_read() {
    let mut c = conv(Kind::Group, &[2]);
    let (commit, recipients) = apply(&mut c, &actor(2), send("hello", "k1"), NOW, LIMITS).unwrap();
    assert_eq!(commit.idempotency, Some((UserId(2), "k1".to_string())));
    assert_eq!(commit.read_cursors, vec![(UserId(2), Seq(2))]);
    assert_eq!(recipients.len(), 2);
    assert_eq!(commit.event.sender_device_id, 20);
}

#[test]
fn non_members_cannot_send() {
    let mut c = conv(Kind::Group, &[2]);
    assert_eq!(
        code(apply(&mut c, &actor(9), send("x", "k"), NOW, LIMITS)),
        ErrorCode::NotMember
    );
    assert_eq!(c.last_seq, Seq(1), "a refusal commits nothing");
}

#[test]
fn only_admins_add_members() {
    let mut c = conv(Kind::Group, &[2]);
    let add = Mutation::AddMembers(others(&[3]));
    assert_eq!(
        code(apply(&mut c, &actor(2), add.clone(), NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    let (commit, recipients) = apply(&mut c, &actor(1), add, NOW, LIMITS).unwrap();
    assert_eq!(commit.upsert_members.len(), 1);
    assert_eq!(commit.upsert_members[0].joined_seq, Seq(2));
    assert!(recipients.contains(&UserId(3)), "the new member hears of it");
}

#[test]
fn adding_only_existing_members_is_a_conflict() {
    let mut c = conv(Kind::Group, &[2]);
    assert_eq!(
        code(apply(
            &mut c,
            &actor(1),
            Mutation::AddMembers(others(&[2])),
            NOW,
            LIMITS
        )),
        ErrorCode::Conflict
    );
}

#[test]
fn groups_stop_at_their_member_limit() {
    let mut c = conv(Kind::Group, &[2, 3]);
    assert_eq!(
        code(apply(
            &mut c,
            &actor(1),
            Mutation::AddMembers(others(&[4, 5])),
            NOW,
            LIMITS
        )),
        ErrorCode::LimitExceeded
    );
    apply(&mut c, &actor(1), Mutation::AddMembers(others(&[4])), NOW, LIMITS).unwrap();
    assert_eq!(c.members.len(), 4);
}

#[test]
fn direct_conversations_take_no_members_and_cannot_be_left() {
    let mut c = conv(Kind::Direct, &[2]);
    assert_eq!(
        code(apply(
            &mut c,
            &actor(1),
            Mutation::AddMembers(others(&[3])),
            NOW,
            LIMITS
        )),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(apply(&mut c, &actor(1), Mutation::Leave, NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(apply(&mut c, &actor(1), Mutation::Remove(UserId(2)), NOW, LIMITS)),
        ErrorCode::Forbidden
    );
}

#[test]
fn only_channels_can_be_joined_and_only_once() {
    let mut g = conv(Kind::Group, &[2]);
    assert_eq!(
        code(apply(&mut g, &actor(5), Mutation::Join, NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    let mut ch = conv(Kind::Channel, &[]);
    let (commit, _) = apply(&mut ch, &actor(5), Mutation::Join, NOW, LIMITS).unwrap();
    assert_eq!(commit.upsert_members[0].user, UserId(5));
    assert_eq!(
        code(apply(&mut ch, &actor(5), Mutation::Join, NOW, LIMITS)),
        ErrorCode::Conflict
    );
}

#[test]
fn a_full_channel_refuses_joins() {
    let mut ch = conv(Kind::Channel, &[2, 3, 4, 5, 6]);
    assert_eq!(
        code(apply(&mut ch, &actor(9), Mutation::Join, NOW, LIMITS)),
        ErrorCode::LimitExceeded
    );
}

#[test]
fn owners_remove_anyone_else_admins_only_members() {
    let mut c = conv(Kind::Group, &[2, 3, 4]);
    apply(
        &mut c,
        &actor(1),
        Mutation::SetRole(UserId(2), Role::Admin),
        NOW,
        LIMITS,
    )
    .unwrap();
    apply(
        &mut c,
        &actor(1),
        Mutation::SetRole(UserId(3), Role::Admin),
        NOW,
        LIMITS,
    )
    .unwrap();
    // An admin may not remove another admin or the owner, but may remove a member.
    assert_eq!(
        code(apply(&mut c, &actor(2), Mutation::Remove(UserId(3)), NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(apply(&mut c, &actor(2), Mutation::Remove(UserId(1)), NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    let (commit, recipients) = apply(&mut c, &actor(2), Mutation::Remove(UserId(4)), NOW, LIMITS).unwrap();
    assert_eq!(commit.remove_members, vec![UserId(4)]);
    assert!(recipients.contains(&UserId(4)), "the removed member learns of it");
    assert!(!c.members.contains_key(&UserId(4)));
    // The owner removes an admin.
    apply(&mut c, &actor(1), Mutation::Remove(UserId(3)), NOW, LIMITS).unwrap();
    assert_eq!(c.members.len(), 2);
}

#[test]
fn nobody_removes_themselves_or_a_stranger() {
    let mut c = conv(Kind::Group, &[2]);
    assert_eq!(
        code(apply(&mut c, &actor(1), Mutation::Remove(UserId(1)), NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(apply(&mut c, &actor(1), Mutation::Remove(UserId(8)), NOW, LIMITS)),
        ErrorCode::NotFound
    );
}

#[test]
fn the_owner_must_transfer_ownership_before_leaving() {
    let mut c = conv(Kind::Group, &[2]);
    assert_eq!(
        code(apply(&mut c, &actor(1), Mutation::Leave, NOW, LIMITS)),
        ErrorCode::Conflict
    );
    apply(
        &mut c,
        &actor(1),
        Mutation::SetRole(UserId(2), Role::Owner),
        NOW,
        LIMITS,
    )
    .unwrap();
    assert_eq!(role(&c, 2), Some(Role::Owner));
    assert_eq!(role(&c, 1), Some(Role::Admin), "the previous owner becomes an admin");
    let (commit, _) = apply(&mut c, &actor(1), Mutation::Leave, NOW, LIMITS).unwrap();
    match commit.event.body {
        Some(Body::MemberRemoved(r)) => assert!(r.left),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lone_owner_may_leave() {
    let mut c = conv(Kind::Group, &[]);
    apply(&mut c, &actor(1), Mutation::Leave, NOW, LIMITS).unwrap();
    assert!(c.members.is_empty());
}

#[test]
fn only_the_owner_changes_roles_and_never_their_own() {
    let mut c = conv(Kind::Group, &[2, 3]);
    assert_eq!(
        code(apply(
            &mut c,
            &actor(2),
            Mutation::SetRole(UserId(3), Role::Admin),
            NOW,
            LIMITS
        )),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(apply(
            &mut c,
            &actor(1),
            Mutation::SetRole(UserId(1), Role::Member),
            NOW,
            LIMITS
        )),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(apply(
            &mut c,
            &actor(1),
            Mutation::SetRole(UserId(2), Role::Unspecified),
            NOW,
            LIMITS
        )),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(apply(
            &mut c,
            &actor(1),
            Mutation::SetRole(UserId(9), Role::Admin),
            NOW,
            LIMITS
        )),
        ErrorCode::NotFound
    );
}

#[test]
fn admins_rename_members_do_not() {
    let mut c = conv(Kind::Group, &[2, 3]);
    apply(
        &mut c,
        &actor(1),
        Mutation::SetRole(UserId(2), Role::Admin),
        NOW,
        LIMITS,
    )
    .unwrap();
    assert_eq!(
        code(apply(&mut c, &actor(3), Mutation::Rename("x".into()), NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    apply(&mut c, &actor(2), Mutation::Rename("new".into()), NOW, LIMITS).unwrap();
    assert_eq!(c.meta.name, "new");
}

#[test]
fn a_channel_keeps_its_name() {
    let mut c = conv(Kind::Channel, &[2]);
    let (name, last) = (c.meta.name.clone(), c.last_seq);
    assert_eq!(
        code(apply(
            &mut c,
            &actor(1),
            Mutation::Rename("../../etc".into()),
            NOW,
            LIMITS
        )),
        ErrorCode::BadRequest
    );
    assert_eq!((c.meta.name.clone(), c.last_seq), (name, last));
}

#[test]
fn only_the_owner_deletes_a_conversation() {
    let mut c = conv(Kind::Group, &[2]);
    assert_eq!(
        code(apply(&mut c, &actor(2), Mutation::Delete, NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    let (commit, _) = apply(&mut c, &actor(1), Mutation::Delete, NOW, LIMITS).unwrap();
    assert!(commit.meta.unwrap().deleted);
    assert!(c.meta.deleted);
    assert!(
        super::live(Some(&mut c)).is_err(),
        "a deleted conversation is no longer live"
    );
}

#[test]
fn only_the_sender_edits_a_message() {
    let mut c = conv(Kind::Group, &[2]);
    let t = message(&mut c, 2);
    let edit = Mutation::Edit {
        target: Seq(t.event.seq),
        text: "fixed".into(),
    };
    assert_eq!(
        code(apply_to_message(&mut c, &actor(1), edit.clone(), &t, NOW)),
        ErrorCode::Forbidden
    );
    let (commit, _) = apply_to_message(&mut c, &actor(2), edit, &t, NOW).unwrap();
    let (target, state) = commit.message_state.unwrap();
    assert_eq!(target, Seq(t.event.seq));
    assert!(state.edited);
    assert_eq!(commit.event.seq, t.event.seq + 1, "an edit is an event of its own");
}

#[test]
fn group_admins_delete_others_messages_but_not_in_direct_conversations() {
    let mut g = conv(Kind::Group, &[2, 3]);
    let t = message(&mut g, 2);
    let del = Mutation::DeleteMessage(Seq(t.event.seq));
    assert_eq!(
        code(apply_to_message(&mut g, &actor(3), del.clone(), &t, NOW)),
        ErrorCode::Forbidden
    );
    let (commit, _) = apply_to_message(&mut g, &actor(1), del.clone(), &t, NOW).unwrap();
    assert!(commit.message_state.unwrap().1.deleted);

    let mut d = conv(Kind::Direct, &[2]);
    let t = message(&mut d, 2);
    let del = Mutation::DeleteMessage(Seq(t.event.seq));
    assert_eq!(
        code(apply_to_message(&mut d, &actor(1), del.clone(), &t, NOW)),
        ErrorCode::Forbidden
    );
    apply_to_message(&mut d, &actor(2), del, &t, NOW).unwrap();
}

#[test]
fn a_deleted_message_takes_no_more_changes() {
    let mut c = conv(Kind::Group, &[2]);
    let mut t = message(&mut c, 2);
    t.state.deleted = true;
    assert_eq!(
        code(apply_to_message(&mut c, &actor(1), react(&t, "👍", false), &t, NOW)),
        ErrorCode::NotFound
    );
}

#[test]
fn reactions_are_added_once_and_removed_only_by_their_owner() {
    let mut c = conv(Kind::Group, &[2]);
    let mut t = message(&mut c, 2);
    assert_eq!(
        code(apply_to_message(&mut c, &actor(1), react(&t, "👍", true), &t, NOW)),
        ErrorCode::NotFound
    );
    let (commit, _) = apply_to_message(&mut c, &actor(1), react(&t, "👍", false), &t, NOW).unwrap();
    t.state = commit.message_state.unwrap().1;
    assert_eq!(t.state.reactions["👍"], vec![UserId(1)]);
    assert_eq!(
        code(apply_to_message(&mut c, &actor(1), react(&t, "👍", false), &t, NOW)),
        ErrorCode::Conflict
    );
    assert_eq!(
        code(apply_to_message(&mut c, &actor(2), react(&t, "👍", true), &t, NOW)),
        ErrorCode::NotFound
    );
    let (commit, _) = apply_to_message(&mut c, &actor(1), react(&t, "👍", true), &t, NOW).unwrap();
    assert!(
        commit.message_state.unwrap().1.reactions.is_empty(),
        "an emoji nobody uses is gone"
    );
}

#[test]
fn a_message_holds_at_most_fifty_different_emojis() {
    let mut c = conv(Kind::Group, &[2]);
    let mut t = message(&mut c, 2);
    for i in 0..super::MAX_DISTINCT_REACTIONS {
        t.state.reactions.insert(format!("e{i}"), vec![UserId(2)]);
    }
    assert_eq!(
        code(apply_to_message(&mut c, &actor(1), react(&t, "🆕", false), &t, NOW)),
        ErrorCode::LimitExceeded
    );
}

#[test]
fn non_members_cannot_touch_messages() {
    let mut c = conv(Kind::Group, &[2]);
    let t = message(&mut c, 2);
    assert_eq!(
        code(apply_to_message(&mut c, &actor(9), react(&t, "👍", false), &t, NOW)),
        ErrorCode::NotMember
    );
}

#[test]
fn a_reply_names_an_event_of_the_conversation() {
    let mut c = conv(Kind::Direct, &[2]);
    let first = message(&mut c, 2);
    let reply = |to: u64| Mutation::Send {
        client_msg_id: format!("r{to}"),
        body: pb::MessageBody {
            text: "re".into(),
            reply_to_seq: to,
            ..Default::default()
        },
    };
    let last = c.last_seq;
    assert_eq!(
        code(apply(&mut c, &actor(1), reply(1_000_000), NOW, LIMITS)),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(apply(&mut c, &actor(1), reply(last.0 + 1), NOW, LIMITS)),
        ErrorCode::NotFound,
        "not itself"
    );
    assert_eq!(c.last_seq, last, "a refused reply commits nothing");
    let (commit, _) = apply(&mut c, &actor(1), reply(first.event.seq), NOW, LIMITS).unwrap();
    match commit.event.body {
        Some(Body::Message(m)) => assert_eq!(m.body.unwrap().reply_to_seq, first.event.seq),
        other => panic!("{other:?}"),
    }
    apply(&mut c, &actor(1), reply(0), NOW, LIMITS).unwrap();
}

/// Event times never go back in seq order (PROTOCOL.md §6): a node whose clock is behind
/// the one that stamped the previous event stamps the previous time, not its own.
#[test]
fn event_times_are_non_decreasing_in_seq_order_whatever_the_clock_says() {
    let mut c = conv(Kind::Group, &[2]);
    let (first, _) = apply(&mut c, &actor(1), send("a", "a"), NOW + 60_000, LIMITS).unwrap();
    assert_eq!(first.event.server_time_ms, NOW + 60_000);
    // The next writer's clock is a minute behind: the event keeps the earlier one's time.
    let (second, _) = apply(&mut c, &actor(2), send("b", "b"), NOW, LIMITS).unwrap();
    assert_eq!(second.event.server_time_ms, NOW + 60_000);
    let t = Target {
        event: second.event.clone(),
        state: MessageState::default(),
    };
    let (reaction, _) = apply_to_message(&mut c, &actor(1), react(&t, "👍", false), &t, NOW + 1).unwrap();
    assert_eq!(reaction.event.server_time_ms, NOW + 60_000);
    // A clock ahead of the last event is taken as it is.
    let (third, _) = apply(&mut c, &actor(2), send("c", "c"), NOW + 60_005, LIMITS).unwrap();
    assert_eq!(third.event.server_time_ms, NOW + 60_005);
    assert_eq!(c.last_time_ms, NOW + 60_005);
}

/// A device of `user` as an encrypted conversation lists it.
fn listed(user: u64, device: u64) -> crate::store::EncryptedDevice {
    crate::store::EncryptedDevice {
        user: UserId(user),
        device: DeviceId(device),
        keys: crate::store::DeviceKeysRecord {
            ed25519: vec![device as u8; 32],
            curve25519: vec![device as u8 + 1; 32],
            signature: vec![0; 64],
        },
    }
}

#[test]
fn an_encrypted_conversation_takes_only_envelopes_and_tracks_its_devices() {
    // actor(1) is device 10 of user 1; user 2 has device 20.
    let (commit, _, mut c) = create(
        ConversationId(7),
        &actor(1),
        Kind::Direct,
        String::new(),
        others(&[2]),
        Some(vec![listed(2, 20), listed(1, 10)]),
        NOW,
    );
    let Some(Body::Created(created)) = &commit.event.body else {
        panic!("a creation event")
    };
    assert!(created.encrypted);
    let ids: Vec<_> = created.devices.iter().map(|d| (d.user_id, d.device_id)).collect();
    assert_eq!(ids, vec![(1, 10), (2, 20)], "sorted by user and device");
    assert_eq!(
        code(apply(&mut c, &actor(1), send("plain", "p"), NOW, LIMITS)),
        ErrorCode::BadRequest
    );

    let key = |d: &crate::store::EncryptedDevice| pb::WrappedKey {
        user_id: d.user.0,
        device_id: d.device.0,
        identity_key: d.keys.curve25519.clone(),
        olm_type: 0,
        olm_body: vec![1],
    };
    let sealed = |keys: Vec<pb::WrappedKey>| Mutation::Send {
        client_msg_id: "s1".into(),
        body: pb::MessageBody {
            kind: pb::MessageKind::Text as i32,
            encrypted: Some(pb::Envelope {
                version: 1,
                sender_key: listed(1, 10).keys.curve25519,
                nonce: vec![0; 24],
                ciphertext: vec![0; 272],
                keys,
                media_ids: vec![],
            }),
            ..Default::default()
        },
    };
    let (ok, _) = apply(&mut c, &actor(1), sealed(vec![key(&listed(2, 20))]), NOW, LIMITS).unwrap();
    assert_eq!(ok.event.seq, 2);

    // Bob's second device publishes its keys: an ordered event, and sends must cover it.
    let bob = Actor {
        user: UserId(2),
        username: "user2".into(),
        device: DeviceId(0),
    };
    let add = Mutation::DevicesChanged {
        add: vec![listed(2, 21)],
        remove: vec![],
    };
    let (changed, _) = apply(&mut c, &bob, add.clone(), NOW, LIMITS).unwrap();
    assert!(matches!(&changed.event.body, Some(Body::DevicesChanged(d)) if d.added.len() == 1));
    assert_eq!(
        code(apply(&mut c, &bob, add, NOW, LIMITS)),
        ErrorCode::Conflict,
        "no change, no event"
    );
    let e = apply(&mut c, &actor(1), sealed(vec![key(&listed(2, 20))]), NOW, LIMITS).unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceMismatch);
    assert_eq!(e.device_mismatch.unwrap().missing.len(), 1);
    let both = vec![key(&listed(2, 20)), key(&listed(2, 21))];
    assert!(apply(&mut c, &actor(1), sealed(both), NOW, LIMITS).is_ok());

    // Edits, deletions and reactions travel sealed, never as server-visible changes.
    let target = Target {
        event: ok.event.clone(),
        state: MessageState::default(),
    };
    let edit = Mutation::Edit {
        target: Seq(2),
        text: "x".into(),
    };
    assert_eq!(
        code(apply_to_message(&mut c, &actor(1), edit, &target, NOW)),
        ErrorCode::BadRequest
    );
    // And a plain conversation takes no envelope.
    let mut plain = conv(Kind::Direct, &[2]);
    assert_eq!(
        code(apply(&mut plain, &actor(1), sealed(vec![]), NOW, LIMITS)),
        ErrorCode::BadRequest
    );
}

#[test]
fn mutes_bans_and_slow_mode() {
    use pb::ModerationAction as A;
    let mut c = conv(Kind::Channel, &[2, 3]);
    let moderate = |user: u64, action: A, until_ms: u64| Mutation::Moderate {
        user: UserId(user),
        username: format!("user{user}"),
        action,
        until_ms,
    };
    // Members do not moderate; the owner mutes until a time.
    assert_eq!(
        code(apply(&mut c, &actor(2), moderate(3, A::Mute, 0), NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    apply(&mut c, &actor(1), moderate(2, A::Mute, NOW + 500), NOW, LIMITS).unwrap();
    let e = apply(&mut c, &actor(2), send("x", "a"), NOW + 100, LIMITS).expect_err("muted");
    assert_eq!((e.code, e.retry_after_ms), (ErrorCode::Forbidden, 400));
    apply(&mut c, &actor(2), send("x", "b"), NOW + 500, LIMITS).expect("the mute ended");
    // Ban: out, and no way back in until unbanned.
    apply(&mut c, &actor(1), moderate(3, A::Ban, 0), NOW, LIMITS).unwrap();
    assert_eq!(role(&c, 3), None);
    assert_eq!(
        code(apply(&mut c, &actor(3), Mutation::Join, NOW, LIMITS)),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(apply(
            &mut c,
            &actor(1),
            Mutation::AddMembers(others(&[3])),
            NOW,
            LIMITS
        )),
        ErrorCode::Forbidden
    );
    apply(&mut c, &actor(1), moderate(3, A::Unban, 0), NOW, LIMITS).unwrap();
    apply(&mut c, &actor(3), Mutation::Join, NOW, LIMITS).unwrap();
    // Slow mode: one message per second for members, none for the owner.
    apply(&mut c, &actor(1), Mutation::SlowMode(1), NOW, LIMITS).unwrap();
    apply(&mut c, &actor(3), send("1", "c"), NOW + 1000, LIMITS).unwrap();
    let e = apply(&mut c, &actor(3), send("2", "d"), NOW + 1200, LIMITS).expect_err("too soon");
    assert_eq!((e.code, e.retry_after_ms), (ErrorCode::RateLimited, 800));
    apply(&mut c, &actor(1), send("o1", "e"), NOW + 1200, LIMITS).unwrap();
    apply(&mut c, &actor(1), send("o2", "f"), NOW + 1201, LIMITS).unwrap();
    apply(&mut c, &actor(3), send("2", "g"), NOW + 2000, LIMITS).expect("a second later");
}

#[test]
fn the_shared_member_list_is_dropped_exactly_when_the_members_change() {
    let mut c = conv(Kind::Group, &[2]);
    let shared = |c: &mut Conv| {
        let list: Vec<_> = c.members.values().cloned().collect();
        c.member_list = Some(std::sync::Arc::new(list));
    };
    shared(&mut c);
    apply(&mut c, &actor(1), send("hi", "k1"), NOW, LIMITS).unwrap();
    assert!(c.member_list.is_some(), "a message leaves the members as they were");
    for change in [
        Mutation::AddMembers(others(&[3])),
        Mutation::SetRole(UserId(3), Role::Admin),
        Mutation::Remove(UserId(3)),
    ] {
        shared(&mut c);
        apply(&mut c, &actor(1), change, NOW, LIMITS).unwrap();
        assert!(c.member_list.is_none(), "a change of members drops the shared list");
    }
}
