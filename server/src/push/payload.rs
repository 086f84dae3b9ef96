//! What a notification says (PROTOCOL.md §13.3): a `PushPayload` built from the queued job's
//! newest event, padded to [`PAYLOAD_BYTES`] so that every notification has the same length
//! before and after encryption. Protobuf for APNs, FCM and UnifiedPush; for Web Push the
//! same fields as JSON (the app-facing `PushNotification`, padded with spaces), which a
//! service worker reads with `event.data.json()`.
use natter_protocol::client::model::PushNotification;
use natter_protocol::pb;
use natter_protocol::{DeviceId, Seq, ServerError, UserId};
use prost::Message;

use crate::store::{Page, PushJob, Store};

/// A Web Push or UnifiedPush payload's length before encryption. Their bodies may have
/// 4,096 bytes; RFC 8291 adds 103 (header, tag and padding delimiter), which leaves room.
pub const PAYLOAD_BYTES: usize = 3072;
/// An APNs or FCM payload's length before encryption. Both take at most 4,096 bytes of
/// JSON, and carry the encrypted body as base64 text (4/3 larger): 2,048 + 103 bytes
/// become 2,868 characters, with room for the rest of the request.
pub const MOBILE_PAYLOAD_BYTES: usize = 2048;

/// The padded length of every payload for `provider`.
pub fn size_for(provider: pb::PushProvider) -> usize {
    match provider {
        pb::PushProvider::Apns | pb::PushProvider::Fcm => MOBILE_PAYLOAD_BYTES,
        _ => PAYLOAD_BYTES,
    }
}
/// Longest text preview, in characters.
pub const PREVIEW_CHARS: usize = 160;
/// Conversations counted for the badge (the rest count as read).
const BADGE_CONVERSATIONS: usize = 500;
/// Unread messages counted per conversation for the badge.
const BADGE_CAP: u32 = 999;

/// The padded payload for `job`, encoded for `provider`.
pub async fn build(store: &dyn Store, job: &PushJob, provider: pb::PushProvider) -> Result<Vec<u8>, ServerError> {
    let web = provider == pb::PushProvider::WebPush;
    let size = size_for(provider);
    let (events, _) = store
        .events(job.conversation, Page::After(Seq(job.seq.saturating_sub(1))), 1)
        .await?;
    let event = events.into_iter().find(|e| e.seq == job.seq);
    let meta = store.load_conversation(job.conversation).await?.map(|c| c.meta);
    let mut p = pb::PushPayload {
        conversation_id: job.conversation.0,
        seq: job.seq,
        collapse_id: collapse_id(job),
        conversation_title: meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        badge: badge(store, job).await?,
        withdraw: job.withdraw,
        ..Default::default()
    };
    if job.withdraw {
        // Read elsewhere: what to take away, and the badge now; nothing to show.
    } else if let Some(e) = &event {
        p.sender_user_id = e.sender_user_id;
        p.sender_name = e.sender_username.clone();
        p.kind = "message".into();
        if let Some(pb::conversation_event::Body::Message(m)) = &e.body {
            let body = m.body.as_ref();
            if body.is_some_and(|b| b.encrypted.is_some()) {
                // Sealed: the event itself if it fits, for the device to open on its own
                // (never to a browser: its service worker holds no keys; it fetches).
                let bytes = e.encode_to_vec();
                let sender_device = store
                    .key_state(UserId(e.sender_user_id), DeviceId(e.sender_device_id))
                    .await?
                    .map(|s| crate::keys::device_keys(&s));
                let with_event = pb::PushPayload {
                    event: bytes,
                    sender_device,
                    ..p.clone()
                };
                if !web && pad(&with_event, size).is_some() {
                    p = with_event;
                } else {
                    p.fetch = true;
                }
            } else if let Some(b) = body {
                p.preview = preview(b);
            }
            p.mention = body.is_some_and(|b| b.mention_here || b.mentions.contains(&job.user.0));
        }
    } else {
        p.fetch = true;
    }
    let padded = if web { pad_json(&p) } else { pad(&p, size) };
    padded.ok_or_else(|| ServerError::new(pb::ErrorCode::Internal, "a push payload does not fit"))
}

/// `p` as the app-facing JSON, padded with spaces to exactly [`PAYLOAD_BYTES`], if it fits.
pub fn pad_json(p: &pb::PushPayload) -> Option<Vec<u8>> {
    let mut out = serde_json::to_vec(&PushNotification::from(p.clone())).ok()?;
    if out.len() > PAYLOAD_BYTES {
        return None;
    }
    out.resize(PAYLOAD_BYTES, b' ');
    Some(out)
}

/// `p` encoded and padded to exactly `size` bytes, if it fits.
pub fn pad(p: &pb::PushPayload, size: usize) -> Option<Vec<u8>> {
    let mut p = p.clone();
    p.padding.clear();
    let bare = p.encoded_len();
    // Field 15 (one tag byte), its length as a varint, then the bytes.
    let mut n = size.checked_sub(bare + 2)?;
    while bare + 1 + prost::encoding::encoded_len_varint(n as u64) + n > size {
        n = n.checked_sub(1)?;
    }
    p.padding = vec![0; n];
    let out = p.encode_to_vec();
    (out.len() == size).then_some(out)
}

/// One notification per device and conversation shows at a time: the newest replaces it.
pub fn collapse_id(job: &PushJob) -> String {
    format!("c{}", job.conversation.0)
}

fn preview(b: &pb::MessageBody) -> String {
    let text: String = b.text.chars().take(PREVIEW_CHARS).collect();
    if text.is_empty() && !b.attachments.is_empty() {
        return match b.attachments.len() {
            1 => format!(
                "📎 {}",
                b.attachments[0]
                    .name
                    .chars()
                    .take(PREVIEW_CHARS - 2)
                    .collect::<String>()
            ),
            n => format!("📎 {n} files"),
        };
    }
    text
}

/// The user's unread messages over their conversations.
async fn badge(store: &dyn Store, job: &PushJob) -> Result<u32, ServerError> {
    let mut total = 0u32;
    for conv in store
        .user_conversations(job.user)
        .await?
        .into_iter()
        .take(BADGE_CONVERSATIONS)
    {
        let read = store.read_cursor(job.user, conv).await?;
        let (unread, _) = store.unread_and_last_message(conv, job.user, read, BADGE_CAP).await?;
        total = total.saturating_add(unread);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_pads_to_the_same_length() {
        for text in ["", "hi", &"x".repeat(PREVIEW_CHARS * 4)] {
            let p = pb::PushPayload {
                conversation_id: u64::MAX,
                seq: 1,
                preview: text.into(),
                ..Default::default()
            };
            for size in [PAYLOAD_BYTES, MOBILE_PAYLOAD_BYTES] {
                let out = pad(&p, size).expect("fits");
                assert_eq!(out.len(), size);
                let back = pb::PushPayload::decode(&out[..]).unwrap();
                assert_eq!(back.preview, text);
            }
        }
        let huge = pb::PushPayload {
            event: vec![1; PAYLOAD_BYTES],
            ..Default::default()
        };
        assert_eq!(pad(&huge, PAYLOAD_BYTES), None, "too big to carry");
        let json = pad_json(&pb::PushPayload {
            preview: "\"quoted\" ünïcode".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(json.len(), PAYLOAD_BYTES);
        let back: PushNotification = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.preview, "\"quoted\" ünïcode");
    }
}
