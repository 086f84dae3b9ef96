//! Moderation (PROTOCOL.md §5.14) from SDK clients: a muted member's sends are refused until
//! the mute ends; a banned user cannot rejoin a channel or be added; slow mode spaces a
//! member's sends (not the admins'); an admin deletes anyone's message; a report reaches
//! the server API's list.
use crate::common;

use std::time::Duration;

use common::*;
use natter_protocol::pb::{self, ErrorCode, ModerationAction as Action};
use natter_sdk::{ClientError, ConversationId, RequestError, Seq, UserId};

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Option<(ErrorCode, u32)> {
    match r {
        Ok(_) => None,
        Err(ClientError::Request(RequestError::Server(e))) => Some((e.code, e.retry_after_ms)),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn mutes_end_bans_hold_and_slow_mode_spaces_sends() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let owner = user(&s, "olive").await;
    let mut bob = user(&s, "bob").await;
    let carol = user(&s, "carol").await;
    let ch = ConversationId(owner.client.create_channel("town").await.unwrap().conversation_id);
    bob.client.join_channel("town").await.unwrap();
    carol.client.join_channel("town").await.unwrap();
    let members = owner.client.members(ch).await.unwrap();
    let id = |name: &str| UserId(members.iter().find(|m| m.username == name).unwrap().user_id);

    // A 1.5 s mute: refused with the time left, then sends again by itself.
    let until = natter_server::clock::now_ms() + 1500;
    owner.client.moderate(ch, id("bob"), Action::Mute, until).await.unwrap();
    let (c, retry) = code(bob.client.send(ch, "let me speak").await).expect("muted");
    assert_eq!(c, ErrorCode::Forbidden);
    assert!(retry > 0 && retry <= 1500, "retry_after_ms {retry}");
    assert_eq!(code(carol.client.send(ch, "others speak").await), None);
    assert!(
        code(bob.client.moderate(ch, id("carol"), Action::Mute, 0).await).is_some(),
        "members do not moderate"
    );
    tokio::time::sleep(Duration::from_millis(u64::from(retry) + 50)).await;
    assert_eq!(code(bob.client.send(ch, "back").await), None, "the mute ended");
    // The moderation is an event everyone sees.
    let moderated = wait_for(&mut bob.events, |e| match e {
        natter_sdk::ClientEvent::Event(ev) => match &ev.body {
            Some(pb::conversation_event::Body::MemberModerated(m)) => Some(m.clone()),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(
        (moderated.username.as_str(), moderated.action),
        ("bob", Action::Mute as i32)
    );

    // Unmuted by hand: a mute until unmuted, then unmute.
    owner.client.moderate(ch, id("carol"), Action::Mute, 0).await.unwrap();
    assert_eq!(
        code(carol.client.send(ch, "x").await).map(|c| c.0),
        Some(ErrorCode::Forbidden)
    );
    owner.client.moderate(ch, id("carol"), Action::Unmute, 0).await.unwrap();
    assert_eq!(code(carol.client.send(ch, "y").await), None);

    // Banned: removed, cannot rejoin or be added, until unbanned.
    owner.client.moderate(ch, id("carol"), Action::Ban, 0).await.unwrap();
    assert_eq!(
        code(carol.client.send(ch, "z").await).map(|c| c.0),
        Some(ErrorCode::NotMember)
    );
    assert_eq!(
        code(carol.client.join_channel("town").await).map(|c| c.0),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(owner.client.add_members(ch, &["carol"]).await).map(|c| c.0),
        Some(ErrorCode::Forbidden)
    );
    owner.client.moderate(ch, id("carol"), Action::Unban, 0).await.unwrap();
    carol
        .client
        .join_channel("town")
        .await
        .expect("unbanned, she joins again");

    // Slow mode: a member's sends are spaced by the interval (the server answers
    // RATE_LIMITED with the time left, and the SDK's outbox sends again then); the owner
    // is not held back.
    owner.client.set_slow_mode(ch, 1).await.unwrap();
    let a = bob.client.send(ch, "first").await.unwrap();
    let b = bob.client.send(ch, "second").await.unwrap();
    let c = bob.client.send(ch, "third").await.unwrap();
    assert!(b.server_time_ms >= a.server_time_ms + 1000, "{a:?} {b:?}");
    assert!(c.server_time_ms >= b.server_time_ms + 1000, "{b:?} {c:?}");
    let o1 = owner.client.send(ch, "owner 1").await.unwrap();
    let o2 = owner.client.send(ch, "owner 2").await.unwrap();
    assert!(o2.server_time_ms < o1.server_time_ms + 1000, "owners are not slowed");
    assert_eq!(
        code(bob.client.set_slow_mode(ch, 0).await).map(|c| c.0),
        Some(ErrorCode::Forbidden)
    );
    owner.client.set_slow_mode(ch, 0).await.unwrap();

    // An admin deletes anyone's message; a member reports one.
    let sent = bob.client.send(ch, "spam spam").await.unwrap();
    carol.client.report(ch, sent.seq, "spam").await.unwrap();
    owner
        .client
        .delete_message(ch, sent.seq)
        .await
        .expect("the owner deletes bob's message");
    assert_eq!(
        code(carol.client.report(ch, Seq(9999), "x").await).map(|c| c.0),
        Some(ErrorCode::NotFound)
    );
    s.shutdown().await;
}
