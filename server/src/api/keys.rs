//! End-to-end encryption requests (PROTOCOL.md §12): publishing, claiming and listing
//! device keys, and keeping every encrypted conversation's device list in step with its
//! members' devices — a device that first publishes keys is added to its user's
//! encrypted conversations, a logged-out one removed, each as an ordered event — and the
//! key backup (§12.9), only for conversations the caller is a member of.
use natter_protocol::codec::encode_frame;
use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};
use natter_protocol::{ConversationId, DeviceId, ServerError, UserId};

use super::Ctx;
use crate::conversation::{Actor, Mutation};
use crate::store::{EncryptedDevice, KeyState};

fn listed(s: KeyState) -> EncryptedDevice {
    EncryptedDevice {
        user: s.user,
        device: s.device,
        keys: s.identity,
    }
}

/// The user's live devices that published keys.
async fn key_states(ctx: &Ctx, user: UserId) -> Result<Vec<KeyState>, ServerError> {
    let live: Vec<DeviceId> = ctx
        .store
        .list_devices(user)
        .await?
        .into_iter()
        .filter(|d| !d.revoked)
        .map(|d| d.id)
        .collect();
    ctx.keys.devices(user, &live).await
}

/// The user's devices as an encrypted conversation lists them.
pub async fn encrypted_devices(ctx: &Ctx, user: UserId) -> Result<Vec<EncryptedDevice>, ServerError> {
    Ok(key_states(ctx, user).await?.into_iter().map(listed).collect())
}

/// The caller may see and claim `target`'s keys: themselves, or someone they share a
/// direct conversation or group with.
async fn may_see(ctx: &Ctx, caller: UserId, target: UserId) -> Result<(), ServerError> {
    if caller == target || super::presence::contacts(ctx, caller).await?.contains(&target) {
        return Ok(());
    }
    Err(ServerError::new(
        ErrorCode::Forbidden,
        "keys of a user you share no conversation with",
    ))
}

/// Apply a change to `actor.user`'s devices in every encrypted conversation of theirs.
/// A conversation whose list already says so is left alone; failures are logged (the
/// next change, or creating the conversation again, repairs the list).
pub async fn sync_devices(ctx: &Ctx, actor: &Actor, add: Vec<EncryptedDevice>, remove: Vec<DeviceId>) {
    let convs = match ctx.store.user_conversations(actor.user).await {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "device list sync: conversations unreadable"),
    };
    for conv in convs {
        match ctx.shards.view(conv, actor.user).await {
            Ok(v) if v.meta.encrypted => {}
            _ => continue,
        }
        let m = Mutation::DevicesChanged {
            add: add.clone(),
            remove: remove.clone(),
        };
        match ctx.shards.mutate(conv, actor.clone(), m).await {
            Ok(_) => {}
            Err(e) if matches!(e.code, ErrorCode::Conflict | ErrorCode::NotFound | ErrorCode::NotMember) => {}
            Err(e) => tracing::warn!(%conv, error = %e.message, "device list sync failed"),
        }
    }
}

/// After creating (or finding) an encrypted conversation: make its list hold every
/// current device of both users. Closes the race with a device that published its keys
/// while the conversation was being created (it listed the conversations before this
/// one existed).
pub async fn ensure_listed(ctx: &Ctx, conv: ConversationId, users: &[(UserId, String)]) -> Result<(), ServerError> {
    for (user, username) in users {
        let actor = Actor {
            user: *user,
            username: username.clone(),
            device: DeviceId(0),
        };
        let m = Mutation::DevicesChanged {
            add: encrypted_devices(ctx, *user).await?,
            remove: Vec::new(),
        };
        match ctx.shards.mutate(conv, actor, m).await {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::Conflict => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn counts_signal(user: UserId, counts: pb::KeyCounts) -> (Vec<UserId>, bytes::Bytes) {
    let frame = pb::Frame {
        kind: Some(pb::frame::Kind::Signal(pb::Signal {
            kind: Some(pb::signal::Kind::KeyCounts(counts)),
        })),
    };
    (vec![user], encode_frame(&frame))
}

/// The conversations `user` is a member of.
async fn member_of(ctx: &Ctx, user: UserId) -> Result<std::collections::HashSet<u64>, ServerError> {
    Ok(ctx
        .store
        .user_conversations(user)
        .await?
        .into_iter()
        .map(|c| c.0)
        .collect())
}

fn not_member(conv: u64) -> ServerError {
    ServerError::new(
        ErrorCode::NotMember,
        format!("backed-up keys of conversation {conv}, which you are not a member of"),
    )
}

/// `UploadKeys`, `ClaimKeys`, `GetDeviceKeys`, `PublishUserKey`, `SignDevice` (the
/// user's signing key), `SendToDevice` (verification steps,
/// relayed to the device's live sessions, never stored) and the key backup's requests.
pub async fn handle(ctx: &Ctx, actor: &Actor, op: Op) -> Result<Res, ServerError> {
    match op {
        Op::UploadKeys(r) => {
            let (state, first) = ctx.keys.upload(actor.user, actor.device, &r).await?;
            let mut counts = crate::keys::counts(&state);
            counts.device_id = actor.device.0;
            if first {
                sync_devices(ctx, actor, vec![listed(state)], Vec::new()).await;
            }
            Ok(Res::KeyCounts(counts))
        }
        Op::ClaimKeys(r) => {
            let target = UserId(r.user_id);
            may_see(ctx, actor.user, target).await?;
            ctx.rates.send(actor.user)?;
            let mut keys = Vec::new();
            for s in key_states(ctx, target).await? {
                let wanted = r.device_ids.is_empty() || r.device_ids.contains(&s.device.0);
                if !wanted || (s.user, s.device) == (actor.user, actor.device) {
                    continue;
                }
                let Some(c) = ctx.keys.claim(s.user, s.device).await? else {
                    continue;
                };
                if c.low {
                    let mut counts = c.counts;
                    counts.device_id = s.device.0;
                    let (to, frame) = counts_signal(s.user, counts);
                    ctx.hub.signal(&to, frame);
                }
                keys.push(c.key);
            }
            Ok(Res::ClaimedKeys(pb::ClaimedKeys { keys }))
        }
        Op::GetDeviceKeys(r) => {
            let target = UserId(r.user_id);
            may_see(ctx, actor.user, target).await?;
            let user_key = ctx.keys.user_key(target).await?;
            let devices = key_states(ctx, target)
                .await?
                .iter()
                .map(|s| {
                    let mut d = crate::keys::device_keys(s);
                    if let Some(sig) = user_key.as_ref().and_then(|k| k.signed.get(&d.device_id)) {
                        d.user_signature = sig.clone();
                    }
                    d
                })
                .collect();
            Ok(Res::UserDevices(pb::UserDevices {
                user_id: target.0,
                devices,
                user_key: user_key.as_ref().map(crate::keys::user_key::wire),
            }))
        }
        Op::PublishUserKey(r) => {
            ctx.rates.send(actor.user)?;
            ctx.keys.publish_user_key(actor.user, actor.device, &r).await?;
            Ok(Res::Done(pb::Done {}))
        }
        Op::SignDevice(r) => {
            ctx.rates.send(actor.user)?;
            ctx.keys.sign_device(actor.user, &r).await?;
            Ok(Res::Done(pb::Done {}))
        }
        Op::SendToDevice(r) => {
            let target = UserId(r.user_id);
            may_see(ctx, actor.user, target).await?;
            if r.payload.len() > natter_protocol::limits::MAX_TO_DEVICE_BYTES {
                return Err(ServerError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "a device message is at most {} bytes",
                        natter_protocol::limits::MAX_TO_DEVICE_BYTES
                    ),
                ));
            }
            ctx.rates.send(actor.user)?;
            let frame = pb::Frame {
                kind: Some(pb::frame::Kind::Signal(pb::Signal {
                    kind: Some(pb::signal::Kind::ToDevice(pb::ToDevice {
                        from_user_id: actor.user.0,
                        from_device_id: actor.device.0,
                        to_device_id: r.device_id,
                        payload: r.payload,
                    })),
                })),
            };
            ctx.hub.signal(&[target], encode_frame(&frame));
            Ok(Res::Done(pb::Done {}))
        }
        Op::GetKeyBackup(_) => Ok(Res::KeyBackup(ctx.keys.backup(actor.user).await?)),
        Op::CreateKeyBackup(r) => Ok(Res::KeyBackup(
            ctx.keys
                .create_backup(actor.user, &r.public_key, r.replaces_version)
                .await?,
        )),
        Op::PutBackupKeys(r) => {
            ctx.rates.send(actor.user)?;
            let mine = member_of(ctx, actor.user).await?;
            if let Some(k) = r.keys.iter().find(|k| !mine.contains(&k.conversation_id)) {
                return Err(not_member(k.conversation_id));
            }
            ctx.keys.put_backup_keys(actor.user, &r).await?;
            Ok(Res::Done(pb::Done {}))
        }
        Op::GetBackupKeys(r) => {
            if !member_of(ctx, actor.user).await?.contains(&r.conversation_id) {
                return Err(not_member(r.conversation_id));
            }
            Ok(Res::BackupKeys(ctx.keys.backup_keys(actor.user, &r).await?))
        }
        _ => Err(ServerError::new(ErrorCode::Internal, "not a key request")),
    }
}
