//! The one list of operations (PROTOCOL.md §5): for each request, a builder that makes its
//! `Op` from typed arguments and the extractor that takes its answer out of the response.
//! Every SDK method is `call(ops::x(..))` plus whatever its binding's types require, so a
//! request added here reaches Rust, Kotlin/Swift/Python (through natter-sdk) and JS alike.
use crate::ids::{ConversationId, DeviceId, Seq, UserId};
use crate::pb::{self, request::Op, response::Result as Res};

/// A request ready to go, with the extractor of its answer.
#[derive(Debug)]
pub struct Call<T> {
    op: Op,
    extract: fn(Res) -> Option<T>,
}

/// The server answered with a response of the wrong kind for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unexpected response from the server")]
pub struct Unexpected;

impl<T> Call<T> {
    fn new(op: Op, extract: fn(Res) -> Option<T>) -> Self {
        Call { op, extract }
    }

    /// The request as it goes on the wire.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// Split into the request and its extractor (the extractor travels to where the
    /// response arrives).
    pub fn into_parts(self) -> (Op, Extract<T>) {
        (self.op, Extract(self.extract))
    }
}

/// Takes one call's answer out of its response.
#[derive(Debug)]
pub struct Extract<T>(fn(Res) -> Option<T>);

impl<T> Extract<T> {
    /// The answer, or [`Unexpected`] for a response of another kind.
    pub fn apply(&self, res: Res) -> Result<T, Unexpected> {
        (self.0)(res).ok_or(Unexpected)
    }
}

/// Where a history page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryAnchor {
    /// The newest page with seq < this (`Seq(0)`: the latest page).
    Before(Seq),
    /// The oldest page with seq > this.
    After(Seq),
}

fn done(r: Res) -> Option<()> {
    matches!(r, Res::Done(_)).then_some(())
}

fn conversation(r: Res) -> Option<pb::ConversationSummary> {
    match r {
        Res::Conversation(c) => Some(c),
        _ => None,
    }
}

fn committed(r: Res) -> Option<Seq> {
    match r {
        Res::Sent(s) => Some(Seq(s.seq)),
        _ => None,
    }
}

/// Create an account (does not log in).
pub fn register(username: &str, password: &str) -> Call<UserId> {
    let op = Op::Register(pb::Register {
        username: username.into(),
        password: password.into(),
    });
    Call::new(op, |r| match r {
        Res::Register(r) => Some(UserId(r.user_id)),
        _ => None,
    })
}

/// Log in as a new device; the session authenticates with the token from then on.
pub fn login(username: &str, password: &str, device_name: &str) -> Call<pb::LoginOk> {
    let op = Op::Login(pb::Login {
        username: username.into(),
        password: password.into(),
        device_name: device_name.into(),
    });
    Call::new(op, |r| match r {
        Res::Login(l) => Some(l),
        _ => None,
    })
}

/// Log in as a new device with a product token (a JWT the product's backend minted,
/// PROTOCOL.md §5.13); the session authenticates with the device's access token from then
/// on, and keeps the product token for when it must be renewed.
pub fn token_login(token: &str, device_name: &str) -> Call<pb::LoginOk> {
    let op = Op::TokenLogin(pb::TokenLogin {
        token: token.into(),
        device_name: device_name.into(),
    });
    Call::new(op, |r| match r {
        Res::Login(l) => Some(l),
        _ => None,
    })
}

/// Renew this device's product token now (PROTOCOL.md §5.13): the new expiry, ms since
/// the epoch. The session keeps the token for its next authentication.
pub fn refresh_token(token: &str) -> Call<u64> {
    let op = Op::RefreshToken(pb::RefreshToken { token: token.into() });
    Call::new(op, |r| match r {
        Res::TokenRefreshed(t) => Some(t.expires_at_ms),
        _ => None,
    })
}

/// Revoke a device's token (`DeviceId(0)`: this device; the connection then closes).
pub fn logout(device: DeviceId) -> Call<()> {
    Call::new(Op::Logout(pb::Logout { device_id: device.0 }), done)
}

/// This user's devices.
pub fn devices() -> Call<Vec<pb::Device>> {
    Call::new(Op::ListDevices(pb::ListDevices {}), |r| match r {
        Res::Devices(d) => Some(d.devices),
        _ => None,
    })
}

/// Register this device's push target (replacing its earlier one), PROTOCOL.md §13.1.
pub fn register_push(target: pb::PushTarget) -> Call<pb::PushRegistrations> {
    Call::new(Op::RegisterPush(pb::RegisterPush { target: Some(target) }), push)
}

/// This device's push registrations and the server's VAPID key.
pub fn list_push() -> Call<pb::PushRegistrations> {
    Call::new(Op::ListPush(pb::ListPush {}), push)
}

/// Remove one of this device's push registrations.
pub fn remove_push(registration_id: &str) -> Call<pb::PushRegistrations> {
    let op = Op::RemovePush(pb::RemovePush {
        registration_id: registration_id.into(),
    });
    Call::new(op, push)
}

/// The user's notification rules.
pub fn notify_settings() -> Call<pb::NotifySettings> {
    Call::new(Op::GetNotifySettings(pb::GetNotifySettings {}), notify)
}

/// Replace the user's notification rules.
pub fn set_notify_settings(settings: pb::NotifySettings) -> Call<pb::NotifySettings> {
    let op = Op::SetNotifySettings(pb::SetNotifySettings {
        settings: Some(settings),
    });
    Call::new(op, notify)
}

/// One page of messages matching a query (PROTOCOL.md §14.3). `req.cursor` continues a
/// previous page.
pub fn search(req: pb::Search) -> Call<pb::SearchResults> {
    Call::new(Op::Search(req), |r| match r {
        Res::Search(s) => Some(s),
        _ => None,
    })
}

/// Listed users whose username starts with `prefix` (PROTOCOL.md §14.4).
pub fn search_users(prefix: &str, limit: u32) -> Call<Vec<pb::UserMatch>> {
    let op = Op::SearchUsers(pb::SearchUsers {
        prefix: prefix.into(),
        limit,
    });
    Call::new(op, |r| match r {
        Res::Users(u) => Some(u.users),
        _ => None,
    })
}

/// Public channels whose name starts with `prefix` (PROTOCOL.md §14.4).
pub fn search_channels(prefix: &str, limit: u32) -> Call<Vec<pb::ChannelMatch>> {
    let op = Op::SearchChannels(pb::SearchChannels {
        prefix: prefix.into(),
        limit,
    });
    Call::new(op, |r| match r {
        Res::Channels(c) => Some(c.channels),
        _ => None,
    })
}

/// Leave this user out of [`search_users`] (or list them again).
pub fn set_unlisted(unlisted: bool) -> Call<()> {
    Call::new(Op::SetUnlisted(pb::SetUnlisted { unlisted }), done)
}

fn notify(r: Res) -> Option<pb::NotifySettings> {
    match r {
        Res::NotifySettings(s) => Some(s),
        _ => None,
    }
}

fn push(r: Res) -> Option<pb::PushRegistrations> {
    match r {
        Res::Push(p) => Some(p),
        _ => None,
    }
}

/// Every conversation of the user, with last message and unread count.
pub fn conversations() -> Call<Vec<pb::ConversationSummary>> {
    Call::new(Op::ListConversations(pb::ListConversations {}), |r| match r {
        Res::Conversations(c) => Some(c.conversations),
        _ => None,
    })
}

/// The 1:1 conversation with `username`, created on first use.
pub fn direct(username: &str) -> Call<pb::ConversationSummary> {
    let op = Op::CreateDirect(pb::CreateDirect {
        username: username.into(),
        encrypted: false,
    });
    Call::new(op, conversation)
}

/// The end-to-end encrypted 1:1 conversation with `username` (PROTOCOL.md §12.3), created
/// on first use.
pub fn encrypted_direct(username: &str) -> Call<pb::ConversationSummary> {
    let op = Op::CreateDirect(pb::CreateDirect {
        username: username.into(),
        encrypted: true,
    });
    Call::new(op, conversation)
}

/// Publish this device's keys (PROTOCOL.md §12.1); the stock after.
pub fn upload_keys(keys: pb::UploadKeys) -> Call<pb::KeyCounts> {
    Call::new(Op::UploadKeys(keys), |r| match r {
        Res::KeyCounts(c) => Some(c),
        _ => None,
    })
}

/// Claim one key of each of `user`'s devices (only `devices` when not empty) (§12.2).
pub fn claim_keys(user: u64, devices: Vec<u64>) -> Call<Vec<pb::ClaimedKey>> {
    let op = Op::ClaimKeys(pb::ClaimKeys {
        user_id: user,
        device_ids: devices,
    });
    Call::new(op, |r| match r {
        Res::ClaimedKeys(c) => Some(c.keys),
        _ => None,
    })
}

/// The identity keys of `user`'s devices.
pub fn device_keys(user: u64) -> Call<Vec<pb::DeviceKeys>> {
    Call::new(Op::GetDeviceKeys(pb::GetDeviceKeys { user_id: user }), |r| match r {
        Res::UserDevices(u) => Some(u.devices),
        _ => None,
    })
}

/// Start a new key backup version with `public_key` (PROTOCOL.md §12.9), replacing
/// `replaces_version` (0: none was seen).
pub fn create_key_backup(public_key: Vec<u8>, replaces_version: u64) -> Call<pb::KeyBackup> {
    let op = Op::CreateKeyBackup(pb::CreateKeyBackup {
        public_key,
        replaces_version,
    });
    Call::new(op, key_backup)
}

/// The user's current key backup (version 0: none).
pub fn get_key_backup() -> Call<pb::KeyBackup> {
    Call::new(Op::GetKeyBackup(pb::GetKeyBackup {}), key_backup)
}

fn key_backup(r: Res) -> Option<pb::KeyBackup> {
    match r {
        Res::KeyBackup(b) => Some(b),
        _ => None,
    }
}

/// Relay a verification step to one device (PROTOCOL.md §12.10).
pub fn send_to_device(user: u64, device: u64, payload: Vec<u8>) -> Call<()> {
    let op = Op::SendToDevice(pb::SendToDevice {
        user_id: user,
        device_id: device,
        payload,
    });
    Call::new(op, done)
}

/// Store sealed message keys in the backup.
pub fn put_backup_keys(batch: pb::PutBackupKeys) -> Call<()> {
    Call::new(Op::PutBackupKeys(batch), done)
}

/// A page of one conversation's backed-up keys after the cursor `after`.
pub fn get_backup_keys(version: u64, conversation: ConversationId, after: Vec<u8>) -> Call<pb::BackupKeys> {
    let op = Op::GetBackupKeys(pb::GetBackupKeys {
        version,
        conversation_id: conversation.0,
        after,
        limit: 0,
    });
    Call::new(op, |r| match r {
        Res::BackupKeys(k) => Some(k),
        _ => None,
    })
}

/// A new private group owned by the caller.
pub fn create_group(name: &str, usernames: Vec<String>) -> Call<pb::ConversationSummary> {
    let op = Op::CreateGroup(pb::CreateGroup {
        name: name.into(),
        usernames,
    });
    Call::new(op, conversation)
}

/// A new public channel owned by the caller.
pub fn create_channel(name: &str) -> Call<pb::ConversationSummary> {
    Call::new(Op::CreateChannel(pb::CreateChannel { name: name.into() }), conversation)
}

/// Join a public channel by name.
pub fn join_channel(name: &str) -> Call<pb::ConversationSummary> {
    Call::new(Op::JoinChannel(pb::JoinChannel { name: name.into() }), conversation)
}

/// Add members (owners and admins).
pub fn add_members(conv: ConversationId, usernames: Vec<String>) -> Call<()> {
    let op = Op::AddMembers(pb::AddMembers {
        conversation_id: conv.0,
        usernames,
    });
    Call::new(op, done)
}

/// Remove a member (owners remove anyone else, admins remove members).
pub fn remove_member(conv: ConversationId, user: UserId) -> Call<()> {
    let op = Op::RemoveMember(pb::RemoveMember {
        conversation_id: conv.0,
        user_id: user.0,
    });
    Call::new(op, done)
}

/// Leave a group or channel.
pub fn leave(conv: ConversationId) -> Call<()> {
    let op = Op::Leave(pb::LeaveConversation {
        conversation_id: conv.0,
    });
    Call::new(op, done)
}

/// Rename a group or channel (owners and admins).
pub fn rename(conv: ConversationId, name: &str) -> Call<()> {
    let op = Op::Rename(pb::RenameConversation {
        conversation_id: conv.0,
        name: name.into(),
    });
    Call::new(op, done)
}

/// Delete a conversation (owner).
pub fn delete(conv: ConversationId) -> Call<()> {
    let op = Op::DeleteConversation(pb::DeleteConversation {
        conversation_id: conv.0,
    });
    Call::new(op, done)
}

/// Change a member's role (owner); `Owner` transfers ownership.
pub fn set_role(conv: ConversationId, user: UserId, role: pb::Role) -> Call<()> {
    let op = Op::SetRole(pb::SetRole {
        conversation_id: conv.0,
        user_id: user.0,
        role: role as i32,
    });
    Call::new(op, done)
}

/// Mute (until `until_ms`, 0: until unmuted), unmute, ban or unban a user in a group or
/// channel (owners and admins; PROTOCOL.md §5.14).
pub fn moderate(conv: ConversationId, user: UserId, action: pb::ModerationAction, until_ms: u64) -> Call<()> {
    let op = Op::Moderate(pb::Moderate {
        conversation_id: conv.0,
        user_id: user.0,
        action: action as i32,
        until_ms,
    });
    Call::new(op, done)
}

/// A channel's slow mode: one message per member per `interval_secs` (0: off).
pub fn set_slow_mode(conv: ConversationId, interval_secs: u32) -> Call<()> {
    let op = Op::SetSlowMode(pb::SetSlowMode {
        conversation_id: conv.0,
        interval_secs,
    });
    Call::new(op, done)
}

/// How long the conversation keeps its events (PROTOCOL.md §5.17): `Some(secs)` (0:
/// forever), or `None` for the server's default for its kind.
pub fn set_retention(conv: ConversationId, retention_secs: Option<u64>) -> Call<()> {
    let op = Op::SetRetention(pb::SetRetention {
        conversation_id: conv.0,
        retention_secs,
    });
    Call::new(op, done)
}

/// Report a message to the product's moderators.
pub fn report(conv: ConversationId, seq: Seq, reason: &str) -> Call<()> {
    let op = Op::ReportMessage(pb::ReportMessage {
        conversation_id: conv.0,
        seq: seq.0,
        reason: reason.into(),
    });
    Call::new(op, done)
}

fn profiles(r: Res) -> Option<Vec<pb::UserProfile>> {
    match r {
        Res::Profiles(p) => Some(p.profiles),
        _ => None,
    }
}

/// Change the caller's profile (PROTOCOL.md §5.15): only the fields given change; an avatar
/// is "", an https URL or `media:<id>` of an image uploaded for conversation 0
/// ([`create_upload`] with [`ConversationId`] 0). Answers the new profile.
pub fn set_profile(change: pb::SetProfile) -> Call<pb::UserProfile> {
    Call::new(Op::SetProfile(change), |r| profiles(r)?.into_iter().next())
}

/// Up to 100 users' profiles (unknown ones are left out).
pub fn profiles_of(users: &[UserId]) -> Call<Vec<pb::UserProfile>> {
    let op = Op::GetProfiles(pb::GetProfiles {
        user_ids: users.iter().map(|u| u.0).collect(),
    });
    Call::new(op, profiles)
}

/// Delete your own account (PROTOCOL.md §5.16): a password account confirms with its
/// password, a product login's with "". The server then logs out every device.
pub fn delete_account(password: &str) -> Call<()> {
    let op = Op::DeleteAccount(pb::DeleteAccount {
        password: password.into(),
    });
    Call::new(op, done)
}

/// A signed path on the web endpoint that serves a zip of your data for 15 minutes.
pub fn export_account() -> Call<pb::ExportReady> {
    Call::new(Op::ExportAccount(pb::ExportAccount {}), |r| match r {
        Res::Export(e) => Some(e),
        _ => None,
    })
}

/// Members of a conversation, with roles.
pub fn members(conv: ConversationId) -> Call<Vec<pb::Member>> {
    let op = Op::GetMembers(pb::GetMembers {
        conversation_id: conv.0,
    });
    Call::new(op, |r| match r {
        Res::Members(m) => Some(m.members),
        _ => None,
    })
}

/// A page of history from `anchor`, at most `limit` events.
pub fn history(conv: ConversationId, anchor: HistoryAnchor, limit: u32) -> Call<pb::HistoryPage> {
    let anchor = Some(match anchor {
        HistoryAnchor::Before(s) => pb::get_history::Anchor::Before(s.0),
        HistoryAnchor::After(s) => pb::get_history::Anchor::After(s.0),
    });
    let op = Op::History(pb::GetHistory {
        conversation_id: conv.0,
        anchor,
        limit,
    });
    Call::new(op, |r| match r {
        Res::History(h) => Some(h),
        _ => None,
    })
}

/// Replace the text of your message; answers the seq of the edit event.
pub fn edit(conv: ConversationId, target: Seq, text: &str) -> Call<Seq> {
    let op = Op::Edit(pb::EditMessage {
        conversation_id: conv.0,
        target_seq: target.0,
        text: text.into(),
    });
    Call::new(op, committed)
}

/// Delete a message; answers the seq of the delete event.
pub fn delete_message(conv: ConversationId, target: Seq) -> Call<Seq> {
    let op = Op::DeleteMessage(pb::DeleteMessage {
        conversation_id: conv.0,
        target_seq: target.0,
    });
    Call::new(op, committed)
}

/// Add (or with `remove`, take back) an emoji reaction; answers the event's seq.
pub fn react(conv: ConversationId, target: Seq, emoji: &str, remove: bool) -> Call<Seq> {
    let op = Op::React(pb::React {
        conversation_id: conv.0,
        target_seq: target.0,
        emoji: emoji.into(),
        remove,
    });
    Call::new(op, committed)
}

/// Move the read cursor (clears unread on the user's other devices, sends receipts).
pub fn mark_read(conv: ConversationId, seq: Seq) -> Call<()> {
    let op = Op::MarkRead(pb::MarkRead {
        conversation_id: conv.0,
        seq: seq.0,
    });
    Call::new(op, done)
}

/// Every member's delivered and read cursors (direct conversations and groups).
pub fn receipts(conv: ConversationId) -> Call<Vec<pb::MemberReceipt>> {
    let op = Op::GetReceipts(pb::GetReceipts {
        conversation_id: conv.0,
    });
    Call::new(op, |r| match r {
        Res::Receipts(r) => Some(r.receipts),
        _ => None,
    })
}

/// Hide (or show) your last-seen time from contacts.
pub fn set_hide_last_seen(hide: bool) -> Call<()> {
    Call::new(Op::SetPrivacy(pb::SetPrivacy { hide_last_seen: hide }), done)
}

/// Presence of these users, as far as they are your contacts.
pub fn presence(users: &[UserId]) -> Call<Vec<pb::PresenceUpdate>> {
    let op = Op::GetPresence(pb::GetPresence {
        user_ids: users.iter().map(|u| u.0).collect(),
    });
    Call::new(op, |r| match r {
        Res::Presence(p) => Some(p.users),
        _ => None,
    })
}

/// Round trip to the server; answers the server's clock (ms since the epoch).
pub fn ping() -> Call<u64> {
    Call::new(Op::Ping(pb::Ping { nonce: 1 }), |r| match r {
        Res::Pong(p) => Some(p.server_time_ms),
        _ => None,
    })
}

fn upload_info(r: Res) -> Option<pb::UploadInfo> {
    match r {
        Res::Upload(u) => Some(u),
        _ => None,
    }
}

/// Announce an upload of `size` bytes to `conv` (PROTOCOL.md §11.1); `sha256` empty or the
/// file's 32-byte digest.
pub fn create_upload(conv: ConversationId, size: u64, mime: &str, name: &str, sha256: Vec<u8>) -> Call<pb::UploadInfo> {
    let op = Op::CreateUpload(pb::CreateUpload {
        conversation_id: conv.0,
        size,
        mime: mime.into(),
        name: name.into(),
        encrypted: false,
        sha256,
    });
    Call::new(op, upload_info)
}

/// [`create_upload`] of a file the client encrypted ([`super::file_crypto`]): `size` and
/// `sha256` are the encrypted bytes'; the server neither sniffs nor thumbnails it.
pub fn create_encrypted_upload(
    conv: ConversationId,
    size: u64,
    mime: &str,
    name: &str,
    sha256: Vec<u8>,
) -> Call<pb::UploadInfo> {
    let op = Op::CreateUpload(pb::CreateUpload {
        conversation_id: conv.0,
        size,
        mime: mime.into(),
        name: name.into(),
        encrypted: true,
        sha256,
    });
    Call::new(op, upload_info)
}

/// Where an upload stands: its committed offset, and the file once ready.
pub fn get_upload(upload_id: &str) -> Call<pb::UploadInfo> {
    Call::new(
        Op::GetUpload(pb::GetUpload {
            upload_id: upload_id.into(),
        }),
        upload_info,
    )
}

/// Stop an upload and delete what it stored.
pub fn cancel_upload(upload_id: &str) -> Call<()> {
    Call::new(
        Op::CancelUpload(pb::CancelUpload {
            upload_id: upload_id.into(),
        }),
        done,
    )
}

/// A finished file's description.
pub fn get_media(media_id: &str) -> Call<pb::MediaInfo> {
    Call::new(
        Op::GetMedia(pb::GetMedia {
            media_id: media_id.into(),
        }),
        |r| match r {
            Res::Media(m) => Some(m),
            _ => None,
        },
    )
}

/// A signed path on the web endpoint for `<img>`/`<video>` (PROTOCOL.md §11.6).
pub fn media_url(media_id: &str, variant: pb::MediaVariant) -> Call<pb::MediaUrlOk> {
    let op = Op::MediaUrl(pb::MediaUrl {
        media_id: media_id.into(),
        variant: variant as i32,
    });
    Call::new(op, |r| match r {
        Res::MediaUrl(u) => Some(u),
        _ => None,
    })
}

/// The first frame of an upload stream at `offset` (PROTOCOL.md §11.2); the file's bytes
/// from `offset` follow it on the stream.
pub fn upload_header(upload_id: &str, offset: u64) -> bytes::Bytes {
    crate::codec::encode_frame(&pb::Frame {
        kind: Some(pb::frame::Kind::UploadHeader(pb::UploadHeader {
            upload_id: upload_id.into(),
            offset,
        })),
    })
}

/// A `Download` of `length` bytes from `offset` (0: to the end) of a file's variant, for
/// [`crate::client::Router::download`].
pub fn download(media_id: &str, variant: pb::MediaVariant, offset: u64, length: u64) -> pb::Download {
    pb::Download {
        media_id: media_id.into(),
        variant: variant as i32,
        offset,
        length,
    }
}

/// A user's devices with their keys, and the user's signing key (PROTOCOL.md §12.12).
pub fn user_devices(user: u64) -> Call<pb::UserDevices> {
    Call::new(Op::GetDeviceKeys(pb::GetDeviceKeys { user_id: user }), |r| match r {
        Res::UserDevices(u) => Some(u),
        _ => None,
    })
}

/// This device holds the user's signing key: make it the user's (if there is none) and
/// publish this device's vouch for it and its signature over this device (§12.12).
pub fn publish_user_key(key: pb::PublishUserKey) -> Call<()> {
    Call::new(Op::PublishUserKey(key), done)
}

/// The user's signing key's signature over another device of the user (§12.12).
pub fn sign_device(device: u64, signature: Vec<u8>) -> Call<()> {
    Call::new(
        Op::SignDevice(pb::SignDevice {
            device_id: device,
            signature,
        }),
        done,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_extracts_its_own_answer_and_refuses_another_kind() {
        let (op, extract) = edit(ConversationId(5), Seq(3), "fixed").into_parts();
        assert!(matches!(op, Op::Edit(ref e) if e.conversation_id == 5 && e.target_seq == 3 && e.text == "fixed"));
        let sent = Res::Sent(pb::SendOk {
            seq: 9,
            ..Default::default()
        });
        assert_eq!(extract.apply(sent), Ok(Seq(9)));
        assert_eq!(extract.apply(Res::Done(pb::Done {})), Err(Unexpected));
        let (_, extract) = leave(ConversationId(5)).into_parts();
        assert_eq!(extract.apply(Res::Done(pb::Done {})), Ok(()));
    }

    #[test]
    fn history_anchors_map_onto_the_wire() {
        let call = history(ConversationId(1), HistoryAnchor::After(Seq(4)), 20);
        match call.op() {
            Op::History(h) => {
                assert_eq!(h.anchor, Some(pb::get_history::Anchor::After(4)));
                assert_eq!(h.limit, 20);
            }
            other => panic!("{other:?}"),
        }
    }
}
