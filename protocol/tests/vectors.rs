//! Golden frames: every vector in `spec/vectors/frames.txt` must decode to the frame this
//! file builds under the same name and re-encode to the same bytes; every vector in
//! `spec/vectors/invalid.txt` must fail with the named error. Regenerate the valid file
//! (after a deliberate wire change only) with `NATTER_WRITE_VECTORS=1 cargo test -p
//! natter-protocol --test vectors`.
use bytes::BytesMut;
use natter_protocol::codec::{decode_frame, encode_frame, encode_frame_compressed, FrameError};
use natter_protocol::limits::{self, MAX_FRAME_BYTES};
use natter_protocol::pb::{self, conversation_event::Body, frame::Kind, request::Op, response::Result as Res};

const VALID: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/frames.txt");
const INVALID: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/invalid.txt");

fn f(kind: Kind) -> pb::Frame {
    pb::Frame { kind: Some(kind) }
}

fn req(id: u64, op: Op) -> pb::Frame {
    f(Kind::Request(pb::Request { id, op: Some(op) }))
}

fn res(id: u64, r: Res) -> pb::Frame {
    f(Kind::Response(pb::Response { id, result: Some(r) }))
}

fn message(conv: u64, seq: u64, text: &str) -> pb::ConversationEvent {
    pb::ConversationEvent {
        conversation_id: conv,
        seq,
        sender_user_id: 1,
        sender_username: "alice".into(),
        sender_device_id: 2,
        server_time_ms: 1_700_000_000_000 + seq,
        body: Some(Body::Message(pb::MessageEvent {
            client_msg_id: format!("c{seq}"),
            body: Some(pb::MessageBody {
                text: text.into(),
                ..Default::default()
            }),
        })),
    }
}

/// (name, meaning, frame, compressed?) — a table, kept one vector per entry.
#[rustfmt::skip]
fn vectors() -> Vec<(&'static str, &'static str, pb::Frame, bool)> {
    let auth_ok = pb::AuthOk {
        user_id: 1,
        username: "alice".into(),
        device_id: 2,
        resume_token: "rs_00".into(),
        resume_window_secs: 120,
        resumed: true,
        conversations: vec![],
        key_counts: None,
        token_expires_at_ms: 0,
    };
    vec![
        ("hello", "Hello { versions: [1], client: \"natter-sdk/0.1.0\" }",
            f(Kind::Hello(pb::Hello { versions: vec![1], client: "natter-sdk/0.1.0".into() })), false),
        ("welcome", "Welcome { version: 1, default limits, server: \"natter-server/0.1.0\", server_time_ms: 1700000000000 }",
            f(Kind::Welcome(pb::Welcome { version: 1, limits: Some(limits::default_limits()), server: "natter-server/0.1.0".into(), server_time_ms: 1_700_000_000_000 })), false),
        ("register", "Request 1: Register { username: \"alice\", password: \"correct horse\" }",
            req(1, Op::Register(pb::Register { username: "alice".into(), password: "correct horse".into() })), false),
        ("register_ok", "Response 1: RegisterOk { user_id: 1 }",
            res(1, Res::Register(pb::RegisterOk { user_id: 1 })), false),
        ("login", "Request 2: Login { username: \"alice\", password: \"correct horse\", device_name: \"phone\" }",
            req(2, Op::Login(pb::Login { username: "alice".into(), password: "correct horse".into(), device_name: "phone".into() })), false),
        ("login_ok", "Response 2: LoginOk { user_id: 1, device_id: 2, access_token: \"nt_00\", session: AuthOk(resumed: false, no conversations) }",
            res(2, Res::Login(pb::LoginOk { user_id: 1, device_id: 2, access_token: "nt_00".into(), session: Some(pb::AuthOk { resumed: false, ..auth_ok.clone() }) })), false),
        ("authenticate", "Request 3: Authenticate { access_token: \"nt_00\", resume_token: \"rs_00\", cursors: [(conversation 42, seq 7)] }",
            req(3, Op::Authenticate(pb::Authenticate { access_token: "nt_00".into(), resume_token: "rs_00".into(), cursors: vec![pb::Cursor { conversation_id: 42, seq: 7 }], product_token: String::new() })), false),
        ("auth_ok_resumed", "Response 3: AuthOk { user 1 \"alice\", device 2, resume_token \"rs_00\", window 120 s, resumed: true }",
            res(3, Res::Auth(auth_ok)), false),
        ("send", "Request 4: SendMessage { conversation 42, client_msg_id \"c8\", text \"hi\", reply_to_seq 7 }",
            req(4, Op::Send(pb::SendMessage { conversation_id: 42, client_msg_id: "c8".into(), body: Some(pb::MessageBody { text: "hi".into(), reply_to_seq: 7, ..Default::default() }) })), false),
        ("send_ok", "Response 4: SendOk { conversation 42, seq 8, server_time_ms 1700000000008, duplicate: false }",
            res(4, Res::Sent(pb::SendOk { conversation_id: 42, seq: 8, server_time_ms: 1_700_000_000_008, duplicate: false })), false),
        ("error_not_member", "Response 5: Error { code: NOT_MEMBER (16), message: \"not a member of this conversation\" }",
            res(5, Res::Error(pb::Error { code: pb::ErrorCode::NotMember as i32, message: "not a member of this conversation".into(), retry_after_ms: 0, device_mismatch: None })), false),
        ("history_after", "Request 6: GetHistory { conversation 42, after: 7, limit: 200 }",
            req(6, Op::History(pb::GetHistory { conversation_id: 42, anchor: Some(pb::get_history::Anchor::After(7)), limit: 200 })), false),
        ("history_page", "Response 6: HistoryPage { conversation 42, events: [message seq 8 \"hi\"], has_more: false, last_seq: 8 }",
            res(6, Res::History(pb::HistoryPage { conversation_id: 42, events: vec![message(42, 8, "hi")], has_more: false, last_seq: 8, removed_through: 0 })), false),
        ("stream_header", "StreamHeader { conversation 42 } (first frame of a delivery stream)",
            f(Kind::StreamHeader(pb::StreamHeader { conversation_id: 42, ..Default::default() })), false),
        ("event_message", "ConversationEvent { conversation 42, seq 8, from alice (user 1, device 2), message c8 \"hi\" }",
            f(Kind::Event(message(42, 8, "hi"))), false),
        ("event_members_added", "ConversationEvent { conversation 42, seq 9, MembersAdded [bob (user 3), member, joined_seq 9] }",
            f(Kind::Event(pb::ConversationEvent { conversation_id: 42, seq: 9, sender_user_id: 1, sender_username: "alice".into(), sender_device_id: 2, server_time_ms: 1_700_000_000_009,
                body: Some(Body::MembersAdded(pb::MembersAdded { members: vec![pb::Member { user_id: 3, username: "bob".into(), role: pb::Role::Member as i32, joined_seq: 9 }] })) })), false),
        ("go_away", "GoAway { reason: \"restarting\", reconnect_after_ms: 500 }",
            f(Kind::GoAway(pb::GoAway { reason: "restarting".into(), reconnect_after_ms: 500 })), false),
        ("connection_error", "ConnectionError { code: FRAME_TOO_LARGE (13), message: \"frame too large\" }",
            f(Kind::ConnectionError(pb::ConnectionError { code: pb::ErrorCode::FrameTooLarge as i32, message: "frame too large".into() })), false),
        ("create_upload", "Request 7: CreateUpload { conversation 42, size 3000000, mime \"image/png\", name \"cat.png\" }",
            req(7, Op::CreateUpload(pb::CreateUpload { conversation_id: 42, size: 3_000_000, mime: "image/png".into(), name: "cat.png".into(), encrypted: false, sha256: vec![] })), false),
        ("upload_info", "Response 7: UploadInfo { upload_id \"AAAAAAAAAAAAAAAAAAAAAA\", media_id \"BBBBBBBBBBBBBBBBBBBBBB\", chunk 1 MiB, committed 0, size 3000000, expires 1700086400000, UPLOADING }",
            res(7, Res::Upload(pb::UploadInfo { upload_id: "A".repeat(22), media_id: "B".repeat(22), chunk_bytes: 1 << 20, committed: 0, size: 3_000_000, expires_ms: 1_700_086_400_000, state: pb::UploadState::Uploading as i32, media: None, error: 0 })), false),
        ("upload_header", "UploadHeader { upload_id \"AAAAAAAAAAAAAAAAAAAAAA\", offset 1048576 } (first frame of an upload stream; raw bytes follow)",
            f(Kind::UploadHeader(pb::UploadHeader { upload_id: "A".repeat(22), offset: 1 << 20 })), false),
        ("upload_progress", "Signal { UploadProgress { upload_id \"AAAAAAAAAAAAAAAAAAAAAA\", committed 2097152, UPLOADING } }",
            f(Kind::Signal(pb::Signal { kind: Some(pb::signal::Kind::Upload(pb::UploadProgress { upload_id: "A".repeat(22), committed: 2 << 20, state: pb::UploadState::Uploading as i32, ..Default::default() })) })), false),
        ("upload_refused", "Signal { UploadProgress { upload_id \"AAAAAAAAAAAAAAAAAAAAAA\", committed 2097152, UPLOADING, error OFFSET_MISMATCH (27), message \"offset 5\" } }",
            f(Kind::Signal(pb::Signal { kind: Some(pb::signal::Kind::Upload(pb::UploadProgress { upload_id: "A".repeat(22), committed: 2 << 20, state: pb::UploadState::Uploading as i32, error: pb::ErrorCode::OffsetMismatch as i32, message: "offset 5".into(), media: None })) })), false),
        ("download", "Request 8: Download { media_id \"BBBBBBBBBBBBBBBBBBBBBB\", THUMB_320, offset 0, length 0 (to the end) }",
            req(8, Op::Download(pb::Download { media_id: "B".repeat(22), variant: pb::MediaVariant::Thumb320 as i32, offset: 0, length: 0 })), false),
        ("download_ok", "Response 8: DownloadOk { media_id \"BBBBBBBBBBBBBBBBBBBBBB\", offset 0, length 12345, total 12345, mime \"image/jpeg\" }",
            res(8, Res::Download(pb::DownloadOk { media_id: "B".repeat(22), offset: 0, length: 12_345, total: 12_345, mime: "image/jpeg".into() })), false),
        ("download_stream_header", "StreamHeader { download_request_id 8 } (first frame of a download stream; raw bytes follow)",
            f(Kind::StreamHeader(pb::StreamHeader { conversation_id: 0, download_request_id: 8 })), false),
        ("send_attachment", "Request 9: SendMessage { conversation 42, client_msg_id \"c11\", kind IMAGE, no text, attachments [media \"BBBBBBBBBBBBBBBBBBBBBB\"] }",
            req(9, Op::Send(pb::SendMessage { conversation_id: 42, client_msg_id: "c11".into(), body: Some(pb::MessageBody { kind: pb::MessageKind::Image as i32, attachments: vec![pb::Attachment { media_id: "B".repeat(22), ..Default::default() }], ..Default::default() }) })), false),
        ("compressed_event", "Frame { compressed: zstd(ConversationEvent { conversation 42, seq 10, text \"natter \" x 4000 }) }",
            f(Kind::Event(message(42, 10, &"natter ".repeat(4000)))), true),
        ("search", "Request 10: Search { query \"foo.png from:bob\", conversations [42], RELEVANT, limit 20, cursor \"o20.1700000000100\" }",
            req(10, Op::Search(pb::Search { query: "foo.png from:bob".into(), conversation_ids: vec![42], order: pb::SearchOrder::Relevant as i32, limit: 20, cursor: "o20.1700000000100".into(), ..Default::default() })), false),
        ("search_results", "Response 10: SearchResults { one hit (conversation 42, seq 8, score 1.5, snippet [\"see \", hit \"foo.png\"], event: message seq 8 \"see foo.png\"), no next cursor, total 1, index lag 0 }",
            res(10, Res::Search(pb::SearchResults { hits: vec![pb::SearchHit { conversation_id: 42, seq: 8, score: 1.5, snippet: vec![pb::SnippetPart { text: "see ".into(), hit: false }, pb::SnippetPart { text: "foo.png".into(), hit: true }], event: Some(message(42, 8, "see foo.png")) }], next_cursor: String::new(), total: 1, index_lag_ms: 0, encrypted_conversation_ids: vec![], local: vec![] })), false),
        ("search_users", "Request 11: SearchUsers { prefix \"ann\", limit 0 (20) }",
            req(11, Op::SearchUsers(pb::SearchUsers { prefix: "ann".into(), limit: 0 })), false),
        ("user_matches", "Response 11: UserMatches [anna (user 5)]",
            res(11, Res::Users(pb::UserMatches { users: vec![pb::UserMatch { user_id: 5, username: "anna".into() }] })), false),
        ("search_channels", "Request 12: SearchChannels { prefix \"rust\", limit 10 }",
            req(12, Op::SearchChannels(pb::SearchChannels { prefix: "rust".into(), limit: 10 })), false),
        ("channel_matches", "Response 12: ChannelMatches [rust (conversation 7, 2 members, joined)]",
            res(12, Res::Channels(pb::ChannelMatches { channels: vec![pb::ChannelMatch { conversation_id: 7, name: "rust".into(), member_count: 2, joined: true }] })), false),
        ("set_unlisted", "Request 13: SetUnlisted { unlisted: true }",
            req(13, Op::SetUnlisted(pb::SetUnlisted { unlisted: true })), false),
        ("token_login", "Request 14: TokenLogin { token: \"h.p.s\", device_name: \"phone\" }",
            req(14, Op::TokenLogin(pb::TokenLogin { token: "h.p.s".into(), device_name: "phone".into() })), false),
        ("authenticate_product_token", "Request 15: Authenticate { access_token: \"nt_00\", product_token: \"h.p.s\" }",
            req(15, Op::Authenticate(pb::Authenticate { access_token: "nt_00".into(), product_token: "h.p.s".into(), ..Default::default() })), false),
        ("error_token_expired", "Response 15: Error { code: TOKEN_EXPIRED (30), message: \"expired\" }",
            res(15, Res::Error(pb::Error { code: pb::ErrorCode::TokenExpired as i32, message: "expired".into(), retry_after_ms: 0, device_mismatch: None })), false),
        ("token_expiring", "Signal { TokenExpiring { expires_at_ms 1700000060000 } }",
            f(Kind::Signal(pb::Signal { kind: Some(pb::signal::Kind::TokenExpiring(pb::TokenExpiring { expires_at_ms: 1_700_000_060_000 })) })), false),
        ("refresh_token", "Request 16: RefreshToken { token: \"h.p.s\" }",
            req(16, Op::RefreshToken(pb::RefreshToken { token: "h.p.s".into() })), false),
        ("token_refreshed", "Response 16: TokenRefreshed { expires_at_ms 1700000660000 }",
            res(16, Res::TokenRefreshed(pb::TokenRefreshed { expires_at_ms: 1_700_000_660_000 })), false),
        ("moderate_mute", "Request 17: Moderate { conversation 42, user 3, MUTE, until_ms 1700000600000 }",
            req(17, Op::Moderate(pb::Moderate { conversation_id: 42, user_id: 3, action: pb::ModerationAction::Mute as i32, until_ms: 1_700_000_600_000 })), false),
        ("set_slow_mode", "Request 18: SetSlowMode { conversation 42, interval_secs 30 }",
            req(18, Op::SetSlowMode(pb::SetSlowMode { conversation_id: 42, interval_secs: 30 })), false),
        ("report_message", "Request 19: ReportMessage { conversation 42, seq 8, reason \"spam\" }",
            req(19, Op::ReportMessage(pb::ReportMessage { conversation_id: 42, seq: 8, reason: "spam".into() })), false),
        ("event_member_moderated", "Event: conversation 42 seq 9, MemberModerated { user 3 \"bob\", BAN }",
            f(Kind::Event(pb::ConversationEvent { seq: 9, body: Some(Body::MemberModerated(pb::MemberModerated { user_id: 3, username: "bob".into(), action: pb::ModerationAction::Ban as i32, until_ms: 0 })), ..message(42, 9, "") })), false),
        ("set_profile", "Request 20: SetProfile { display_name \"Alice\", avatar \"media:AAAAAAAAAAAAAAAAAAAAAA\" } (status absent: unchanged)",
            req(20, Op::SetProfile(pb::SetProfile { display_name: Some("Alice".into()), avatar: Some("media:AAAAAAAAAAAAAAAAAAAAAA".into()), status: None })), false),
        ("set_profile_clear_status", "Request 21: SetProfile { status \"\" } (present and empty: cleared)",
            req(21, Op::SetProfile(pb::SetProfile { display_name: None, avatar: None, status: Some(String::new()) })), false),
        ("get_profiles", "Request 22: GetProfiles { user_ids [3, 7] }",
            req(22, Op::GetProfiles(pb::GetProfiles { user_ids: vec![3, 7] })), false),
        ("profiles", "Response 22: Profiles [user 3 \"alice\" \"Alice\" avatar https, status \"away\", updated 1700000000000]",
            res(22, Res::Profiles(pb::Profiles { profiles: vec![pb::UserProfile { user_id: 3, username: "alice".into(), display_name: "Alice".into(), avatar: "https://example.com/a.png".into(), status: "away".into(), bot: false, updated_ms: 1_700_000_000_000 }] })), false),
        ("delete_account", "Request 23: DeleteAccount { password \"hunter2hunter2\" }",
            req(23, Op::DeleteAccount(pb::DeleteAccount { password: "hunter2hunter2".into() })), false),
        ("export_account", "Request 24: ExportAccount {}",
            req(24, Op::ExportAccount(pb::ExportAccount {})), false),
        ("export_ready", "Response 24: ExportReady { path \"/export/3?exp=1700000900000&sig=ab\", expires 1700000900000 }",
            res(24, Res::Export(pb::ExportReady { path: "/export/3?exp=1700000900000&sig=ab".into(), expires_ms: 1_700_000_900_000 })), false),
        ("event_user_erased", "Event: conversation 42 seq 10, sender 0, UserErased { user 3, erased }",
            f(Kind::Event(pb::ConversationEvent { seq: 10, sender_user_id: 0, sender_username: String::new(), body: Some(Body::UserErased(pb::UserErased { user_id: 3, anonymised: false })), ..message(42, 10, "") })), false),
        ("event_erased", "Event: conversation 42 seq 4, sender 0, Erased { message }",
            f(Kind::Event(pb::ConversationEvent { seq: 4, sender_user_id: 0, sender_username: String::new(), sender_device_id: 0, body: Some(Body::Erased(pb::Erased { message: true })), ..message(42, 4, "") })), false),
        ("signal_profile_changed", "Signal: ProfileChanged { user 3 \"alice\", bot }",
            f(Kind::Signal(pb::Signal { kind: Some(pb::signal::Kind::ProfileChanged(pb::UserProfile { user_id: 3, username: "alice".into(), bot: true, updated_ms: 1_700_000_000_001, ..Default::default() })) })), false),
        ("set_retention", "Request 25: SetRetention { conversation 42, retention_secs 2592000 (30 days) }",
            req(25, Op::SetRetention(pb::SetRetention { conversation_id: 42, retention_secs: Some(2_592_000) })), false),
        ("set_retention_forever", "Request 26: SetRetention { conversation 42, retention_secs 0 (forever; present, unlike the default) }",
            req(26, Op::SetRetention(pb::SetRetention { conversation_id: 42, retention_secs: Some(0) })), false),
        ("set_retention_default", "Request 27: SetRetention { conversation 42 } (retention_secs absent: the kind's default)",
            req(27, Op::SetRetention(pb::SetRetention { conversation_id: 42, retention_secs: None })), false),
        ("event_retention_changed", "Event: conversation 42 seq 11, RetentionChanged { retention_secs absent, effective_secs 31536000 }",
            f(Kind::Event(pb::ConversationEvent { seq: 11, body: Some(Body::RetentionChanged(pb::RetentionChanged { retention_secs: None, effective_secs: 31_536_000 })), ..message(42, 11, "") })), false),
        ("history_removed_through", "Response 28: HistoryPage { conversation 42, events [message seq 8 \"hi\"], has_more false, last_seq 8, removed_through 7 }",
            res(28, Res::History(pb::HistoryPage { conversation_id: 42, events: vec![message(42, 8, "hi")], has_more: false, last_seq: 8, removed_through: 7 })), false),
    ]
}

fn encode(frame: &pb::Frame, compressed: bool) -> Vec<u8> {
    if compressed {
        encode_frame_compressed(frame, MAX_FRAME_BYTES).unwrap().to_vec()
    } else {
        encode_frame(frame).to_vec()
    }
}

#[test]
fn every_valid_vector_decodes_to_its_frame_and_reencodes_identically() {
    if std::env::var("NATTER_WRITE_VECTORS").is_ok() {
        let mut out = String::from("# natter v1 golden frames: name | hex (varint length + Frame) | meaning\n");
        for (name, meaning, frame, c) in vectors() {
            out.push_str(&format!("{name} | {} | {meaning}\n", hex::encode(encode(&frame, c))));
        }
        std::fs::write(VALID, out).unwrap();
    }
    let text = std::fs::read_to_string(VALID).unwrap();
    let expected = vectors();
    let mut seen = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let mut parts = line.split(" | ");
        let (name, hexs) = (parts.next().unwrap(), parts.next().unwrap());
        let bytes = hex::decode(hexs).unwrap();
        let (_, _, frame, compressed) = expected
            .iter()
            .find(|v| v.0 == name)
            .unwrap_or_else(|| panic!("unknown vector {name}"));
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = decode_frame(&mut buf, MAX_FRAME_BYTES).unwrap().unwrap();
        assert!(buf.is_empty(), "{name}: trailing bytes");
        assert_eq!(&decoded, frame, "{name}: decodes to its meaning");
        assert_eq!(
            encode(frame, *compressed),
            bytes,
            "{name}: re-encodes to the same bytes"
        );
        seen += 1;
    }
    assert_eq!(seen, expected.len(), "every vector is in the file");
}

#[test]
fn every_invalid_vector_fails_with_its_error() {
    let text = std::fs::read_to_string(INVALID).unwrap();
    let mut seen = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let mut parts = line.split(" | ");
        let (name, hexs, want) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let mut buf = BytesMut::from(&hex::decode(hexs).unwrap()[..]);
        let err = decode_frame(&mut buf, MAX_FRAME_BYTES).expect_err(name);
        let got = match err {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::BadLength => "bad_length",
            FrameError::Malformed(_) => "malformed",
            FrameError::NestedCompression => "nested_compression",
            FrameError::Decompress(_) => "decompress",
            _ => "other",
        };
        assert_eq!(got, want, "{name}");
        seen += 1;
    }
    assert!(seen >= 5);
}

const FILE_CRYPTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/file_crypto.txt");

/// The client-side file encryption of PROTOCOL.md §11.7, pinned so every SDK (and any
/// other client) seals and opens files the same way: per case the key material, the
/// plaintext (`byte i = i mod 251`, of the given length), and slices of the sealed file
/// (`start..end` and their hex). Regenerated like `frames.txt`.
#[test]
fn file_crypto_vectors() {
    use natter_protocol::client::file_crypto::{self, FileKey};
    let key_bytes: Vec<u8> = (0..FileKey::BYTES as u8).collect();
    let key = FileKey::from_bytes(&key_bytes).unwrap();
    let plain = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    let mut out = String::from(
        "# Client-side file encryption (PROTOCOL.md §11.7). One case per line:\n\
         # name key_hex plaintext_length sealed_length start..end:sealed_hex\n\
         # plaintext byte i = i mod 251; sealed = chunks of 65,536 bytes, each XChaCha20-Poly1305\n\
         # under STREAM (nonce = prefix | u32 BE chunk index | last flag), tag after each chunk.\n",
    );
    for (name, n, slices) in [
        ("empty", 0usize, vec![(0usize, 16usize)]),
        ("short", 6, vec![(0, 22)]),
        ("one-full-chunk", 65_536, vec![(0, 32), (65_520, 65_552)]),
        ("two-chunks", 65_537, vec![(0, 32), (65_520, 65_552), (65_552, 65_569)]),
    ] {
        let p = plain(n);
        let sealed = file_crypto::encrypt(&key, &p);
        assert_eq!(file_crypto::decrypt(&key, &sealed).unwrap(), p);
        let parts: Vec<String> = slices
            .iter()
            .map(|&(a, b)| format!("{a}..{b}:{}", hex::encode(&sealed[a..b])))
            .collect();
        out.push_str(&format!(
            "{name} {} {n} {} {}\n",
            key.to_hex(),
            sealed.len(),
            parts.join(" ")
        ));
    }
    if std::env::var("NATTER_WRITE_VECTORS").is_ok() {
        std::fs::write(FILE_CRYPTO, &out).unwrap();
    }
    let committed = std::fs::read_to_string(FILE_CRYPTO).expect("spec/vectors/file_crypto.txt");
    assert_eq!(committed, out, "sealing changed: that breaks every file already sent");
}

const E2EE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/e2ee.txt");

/// The byte-exact parts of PROTOCOL.md §12 (Olm itself is standard and checked against
/// libolm by server/tests/e2ee.rs): what a device signs, the associated data, the padded
/// plaintext and the sealed content for fixed keys. Regenerated like `frames.txt`.
#[test]
fn e2ee_vectors() {
    use natter_protocol::e2ee;
    use natter_protocol::{ConversationId, DeviceId, UserId};
    let ed: Vec<u8> = (0..32).collect();
    let curve: Vec<u8> = (32..64).collect();
    let (user, device) = (UserId(7), DeviceId(0x0102_0304_0506_0708));
    let mut out = String::from(
        "# End-to-end encryption (PROTOCOL.md §12). One value per line: name hex.\n\
         # ed25519 = 00..1f, curve25519 = 20..3f, user 7, device 0x0102030405060708,\n\
         # conversation 42, client_msg_id \"m1\", message key = 40..5f, nonce = 60..77;\n\
         # the content is SealedContent { body: MessageBody { kind: TEXT, text } }.\n",
    );
    let line = |out: &mut String, name: &str, b: &[u8]| out.push_str(&format!("{name} {}\n", hex::encode(b)));
    line(
        &mut out,
        "device_keys_message",
        &e2ee::device_keys_message(user, device, &ed, &curve),
    );
    line(
        &mut out,
        "one_time_key_message",
        &e2ee::one_time_key_message(user, device, &curve),
    );
    // The user's signing key (§12.12): what it signs over a device (the device key pair
    // above), and what a device signs over it (the key = 00..1f).
    line(
        &mut out,
        "device_by_user_message",
        &e2ee::device_by_user_message(user, device, &ed, &curve),
    );
    line(&mut out, "user_key_message", &e2ee::user_key_message(user, &ed));
    let aad = e2ee::content_aad(ConversationId(42), user, device, "m1");
    line(&mut out, "content_aad", &aad);
    let key: [u8; 32] = std::array::from_fn(|i| 0x40 + i as u8);
    let nonce: [u8; 24] = std::array::from_fn(|i| 0x60 + i as u8);
    for (name, text) in [("hi", "hi".to_string()), ("bucket_512", "x".repeat(300))] {
        let content = pb::SealedContent {
            body: Some(pb::MessageBody {
                kind: pb::MessageKind::Text as i32,
                text,
                ..Default::default()
            }),
            change: None,
        };
        let bytes = prost::Message::encode_to_vec(&content);
        line(&mut out, &format!("{name}.padded"), &e2ee::pad(&bytes));
        let sealed = e2ee::seal_content(&key, &nonce, &aad, &content);
        assert_eq!(e2ee::open_content(&key, &nonce, &aad, &sealed).unwrap(), content);
        line(&mut out, &format!("{name}.ciphertext"), &sealed);
    }
    // The key backup (§12.9): recovery key 80..9f, its text and its HPKE public key; and
    // the message key above sealed to it for the message above. HPKE sealing is
    // randomised, so the sealed pair is kept from the committed file and checked to open.
    use natter_protocol::client::e2ee::backup;
    let recovery = backup::RecoveryKey::from_random(std::array::from_fn(|i| 0x80 + i as u8));
    line(&mut out, "recovery_key.text", recovery.to_display().as_bytes());
    line(&mut out, "recovery_key.public_key", &recovery.public_key());
    let committed = std::fs::read_to_string(E2EE).unwrap_or_default();
    let kept = |name: &str| {
        committed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|h| hex::decode(h).ok())
    };
    let id = backup::BackedUp {
        conversation: ConversationId(42),
        user,
        device,
        client_msg_id: "m1".into(),
    };
    let sealed = match (kept("backup_key.encapsulated_key"), kept("backup_key.ciphertext")) {
        (Some(enc), Some(ct)) if std::env::var("NATTER_WRITE_VECTORS").is_err() => pb::BackupKey {
            conversation_id: 42,
            sender_user_id: user.0,
            sender_device_id: device.0,
            client_msg_id: "m1".into(),
            encapsulated_key: enc,
            ciphertext: ct,
        },
        _ => backup::seal_key(&recovery.public_key(), &id, &key).unwrap(),
    };
    assert_eq!(
        backup::open_key(&recovery, &sealed).unwrap(),
        (id, key),
        "the backed-up key opens"
    );
    line(&mut out, "backup_key.encapsulated_key", &sealed.encapsulated_key);
    line(&mut out, "backup_key.ciphertext", &sealed.ciphertext);
    if std::env::var("NATTER_WRITE_VECTORS").is_ok() {
        std::fs::write(E2EE, &out).unwrap();
    }
    let committed = std::fs::read_to_string(E2EE).expect("spec/vectors/e2ee.txt");
    assert_eq!(
        committed, out,
        "the envelope's bytes changed: that breaks every message already sent"
    );
}
