//! Presence as the request layer sees it: who a user's contacts are, and publishing the
//! coalesced changes the presence tracker hands up (saving last seen, merging other nodes'
//! views, signalling contacts).
use std::collections::HashSet;

use natter_protocol::codec::encode_frame;
use natter_protocol::pb;
use natter_protocol::{ServerError, UserId};

use super::Ctx;
use crate::store::PresenceRecord;

/// The members of the user's direct conversations and groups, the user excluded.
pub async fn contacts(ctx: &Ctx, user: UserId) -> Result<Vec<UserId>, ServerError> {
    let mut out = HashSet::new();
    for conv in ctx.store.user_conversations(user).await? {
        match ctx.shards.view(conv, user).await {
            Ok(v) if v.meta.kind != pb::ConversationKind::Channel => out.extend(v.members.iter().map(|m| m.user)),
            _ => {}
        }
    }
    out.remove(&user);
    Ok(out.into_iter().collect())
}

/// Save `offline` users' last seen, then tell each changed user's contacts (PROTOCOL.md
/// §5.11). With several nodes, the directory learns this node's view first and contacts
/// hear the user's best state over every node (offline here is not offline if a phone is
/// still online on another node).
pub async fn publish(ctx: &Ctx, changes: Vec<pb::PresenceUpdate>, offline: Vec<(UserId, PresenceRecord)>) {
    for (user, rec) in offline {
        if let Err(e) = ctx.store.put_presence_record(user, rec).await {
            tracing::warn!(%user, error = %e, "presence: last seen not saved");
        }
    }
    for mut change in changes {
        let user = UserId(change.user_id);
        if let Some(cluster) = &ctx.cluster {
            if let Err(e) = cluster.attach(user, change.state()).await {
                tracing::warn!(%user, error = %e, "presence: directory update failed");
            }
            change = cluster.merge_presence(change).await;
        }
        let contacts = match contacts(ctx, user).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%user, error = %e, "presence: contacts lookup failed");
                continue;
            }
        };
        let frame = pb::Frame {
            kind: Some(pb::frame::Kind::Signal(pb::Signal {
                kind: Some(pb::signal::Kind::Presence(change)),
            })),
        };
        ctx.hub.signal(&contacts, encode_frame(&frame));
    }
}
