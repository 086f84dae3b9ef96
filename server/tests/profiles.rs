//! Profiles (PROTOCOL.md §5.15) from SDK clients: a user sets display name, status and an
//! uploaded avatar; a fellow member and the user's other device hear `ProfileChanged`, a
//! stranger does not; anyone signed in reads the avatar and its thumbnail, but only while it
//! is the avatar; files that cannot be avatars and malformed fields are typed refusals; the
//! server API's view of the user agrees.
use crate::common;

use bytes::Bytes;
use common::*;
use natter_protocol::pb::{self, ErrorCode};
use natter_sdk::{ClientError, ClientEvent, Events, UserId};

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(e) if e.code().is_some() => e.code().unwrap(),
        other => panic!("expected a server refusal, got {other:?}"),
    }
}

fn png(w: u32, h: u32, shade: u8) -> Bytes {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([shade, (x % 256) as u8, (y % 256) as u8]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    Bytes::from(out)
}

async fn profile_changed(events: &mut Events, user: u64) -> pb::UserProfile {
    wait_for(events, |e| match e {
        ClientEvent::ProfileChanged(p) if p.user_id == user => Some(p.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_changed_profile_reaches_members_and_own_devices_and_its_avatar_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let (alice, mut bob, dm) = alice_and_bob(&s).await;
    let mut alice2 = device(s.addr, &s.fingerprint, "alice", false).await;
    let carol = user(&s, "carol").await;
    let members = alice.client.members(dm).await.unwrap();
    let id = |name: &str| members.iter().find(|m| m.username == name).unwrap().user_id;
    let (alice_id, bob_id) = (id("alice"), id("bob"));

    // Before any change: the username alone.
    let before = carol.client.profiles(&[UserId(alice_id)]).await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(
        (
            before[0].username.as_str(),
            before[0].display_name.as_str(),
            before[0].updated_ms
        ),
        ("alice", "", 0)
    );

    let set = alice
        .client
        .set_profile(Some("Alice Liddell"), None, Some("down the rabbit hole"))
        .await
        .unwrap();
    assert_eq!(set.display_name, "Alice Liddell");
    for events in [&mut bob.events, &mut alice2.events] {
        let seen = profile_changed(events, alice_id).await;
        assert_eq!(
            (seen.display_name.as_str(), seen.status.as_str(), seen.avatar.as_str()),
            ("Alice Liddell", "down the rabbit hole", "")
        );
    }

    // An uploaded avatar: anyone signed in reads it and its thumbnail.
    let image = png(400, 300, 200);
    let p = alice
        .client
        .set_avatar("me.png", "image/png", image.clone())
        .await
        .unwrap();
    let media = p.avatar.strip_prefix("media:").expect("a media avatar").to_string();
    assert_eq!(p.display_name, "Alice Liddell", "fields not given stay");
    let seen = profile_changed(&mut bob.events, alice_id).await;
    // (bob may first see the earlier change again only if it was sent twice: it was not)
    assert_eq!(seen.avatar, p.avatar);
    assert!(seen.updated_ms > set.updated_ms);
    let full = carol
        .client
        .download_all(&media, pb::MediaVariant::Original)
        .await
        .unwrap();
    assert_eq!(full, image.to_vec(), "a stranger reads the avatar byte for byte");
    let thumb = carol
        .client
        .download_all(&media, pb::MediaVariant::Thumb320)
        .await
        .unwrap();
    let small = image::load_from_memory(&thumb).expect("the thumbnail is an image");
    assert_eq!((small.width(), small.height()), (320, 240), "fits in 320×320");

    // Carol shares no conversation: no signal for her, but GetProfiles answers.
    let got = carol
        .client
        .profiles(&[UserId(alice_id), UserId(alice_id), UserId(999_999)])
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "duplicates and unknown ids left out: {got:?}");
    assert_eq!(got[0].avatar, p.avatar);

    // A new avatar: the old file is no longer readable by others (it was only an avatar).
    let p2 = alice
        .client
        .set_avatar("me2.png", "image/png", png(64, 64, 10))
        .await
        .unwrap();
    assert_ne!(p2.avatar, p.avatar);
    assert_eq!(
        code(carol.client.download_all(&media, pb::MediaVariant::Original).await),
        ErrorCode::NotFound
    );
    // No ProfileChanged reached carol through all this: a signal sent to her would have come
    // on her control stream before the answer to a request she makes now.
    let mut carol = carol;
    carol.client.profiles(&[UserId(alice_id)]).await.unwrap();
    while let Ok(Some(e)) = tokio::time::timeout(std::time::Duration::from_millis(1), carol.events.next()).await {
        assert!(!matches!(e, ClientEvent::ProfileChanged(_)), "carol heard {e:?}");
    }

    // Refusals: someone else's file, a file that is not an image, bad fields.
    assert_eq!(
        code(bob.client.set_profile(None, Some(&p2.avatar), None).await),
        ErrorCode::NotFound,
        "bob cannot take alice's picture"
    );
    assert_eq!(
        code(
            bob.client
                .upload(
                    natter_sdk::ConversationId(0),
                    "notes.txt",
                    "text/plain",
                    Bytes::from_static(b"hello"),
                    |_, _| {}
                )
                .await
        ),
        ErrorCode::BadRequest,
        "avatars are images"
    );
    for (name, avatar, status) in [
        (Some("x".repeat(65)), None, None),
        (Some("line\nbreak".to_string()), None, None),
        (None, Some("http://plain.example/a.png".to_string()), None),
        (None, Some("media:../../etc/passwd".to_string()), None),
        (None, None, Some("s".repeat(141))),
    ] {
        let r = bob
            .client
            .set_profile(name.as_deref(), avatar.as_deref(), status.as_deref())
            .await;
        assert_eq!(code(r), ErrorCode::BadRequest);
    }
    let bob_now = alice.client.profiles(&[UserId(bob_id)]).await.unwrap();
    assert_eq!(bob_now[0].updated_ms, 0, "nothing refused was written");
    assert_eq!(
        code(alice.client.profiles(&vec![UserId(1); 101]).await),
        ErrorCode::LimitExceeded
    );
}

#[tokio::test]
async fn the_cli_sets_a_name_status_and_avatar_file_and_reads_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let cli_dir = dir.path().join("cli");
    cli_user(&cli_dir, &s, "dora").await;
    let mut watcher = user(&s, "wally").await;
    watcher.client.direct("dora").await.unwrap();

    let file = dir.path().join("dora.png");
    std::fs::write(&file, png(100, 80, 50)).unwrap();
    let file = file.to_str().unwrap();
    let set = cli(
        &cli_dir,
        &[
            "profile",
            "set",
            "--name",
            "Dora the CLI",
            "--status",
            "in a terminal",
            "--avatar-file",
            file,
        ],
    )
    .await;
    assert_eq!(set.len(), 1);
    assert_eq!(set[0]["displayName"], "Dora the CLI");
    assert_eq!(set[0]["status"], "in a terminal");
    let avatar = set[0]["avatar"].as_str().unwrap().to_string();
    assert!(avatar.starts_with("media:"), "{avatar}");
    let heard = wait_for(&mut watcher.events, |e| match e {
        ClientEvent::ProfileChanged(p) if p.display_name == "Dora the CLI" => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(heard.avatar, avatar, "the member of her DM heard the change");

    let got = cli(&cli_dir, &["profile", "get", &heard.user_id.to_string(), "999999"]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["username"], "dora");
    let err = cli_fails(&cli_dir, &["profile", "set", "--avatar-url", "ftp://x"]).await;
    assert!(
        err.contains("BadRequest") || err.contains("BAD_REQUEST") || err.contains("avatar"),
        "{err}"
    );
    let err = cli_fails(&cli_dir, &["profile", "set", "--avatar-file", "/etc/hostname"]).await;
    assert!(err.contains(".png"), "{err}");
}
