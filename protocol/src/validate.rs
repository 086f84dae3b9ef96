//! Input validation shared by client and server, so both reject the same input with the
//! same [`ValidationError`] (and the same wire code).
use crate::{limits, pb};

/// Why an input was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Text longer than the limit.
    #[error("text is {chars} characters, the limit is {max}")]
    TextTooLong {
        /// Length of the text in characters.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// A text message with no text.
    #[error("message text is empty")]
    EmptyText,
    /// A message kind this version cannot send yet.
    #[error("message kind {0} is not supported yet")]
    UnsupportedKind(i32),
    /// A malformed username.
    #[error("username must be 3-32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit")]
    Username,
    /// A password out of the allowed length.
    #[error("password must be 8-1024 bytes")]
    Password,
    /// A malformed client message id.
    #[error("client message id must be 1-64 characters of A-Z, a-z, 0-9, '_', '-'")]
    ClientMsgId,
    /// A group or device name that is empty or too long.
    #[error("name must be 1-64 characters and contain no control characters")]
    Name,
    /// A malformed channel name.
    #[error("channel name must be 1-64 characters of a-z, 0-9, '_', '-'")]
    ChannelName,
    /// A list longer than allowed.
    #[error("{what}: {len} items, the limit is {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many were given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A reaction that is not one emoji, or is too long.
    #[error("a reaction must be one emoji of at most 32 bytes")]
    Emoji,
    /// A request the caller may not make directly.
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    /// A zero id where an id is required.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A file name that is empty, too long, a path or has control characters.
    #[error("file name must be 1-255 bytes with no '/', '\\', control characters, and not '.' or '..'")]
    FileName,
    /// A declared content type that is not `type/subtype`.
    #[error("content type must be type/subtype of at most 127 bytes")]
    Mime,
    /// A malformed media or upload id.
    #[error("malformed media or upload id")]
    MediaId,
    /// A product token that is empty or over [`limits::MAX_PRODUCT_TOKEN_BYTES`].
    #[error("a product token must be 1-8192 bytes")]
    ProductToken,
    /// A profile field that breaks its rule (PROTOCOL.md §5.15).
    #[error("{0}")]
    Profile(&'static str),
    /// An end-to-end envelope of the wrong shape, or content outside it (PROTOCOL.md §12.3).
    #[error("encrypted message: {0}")]
    Envelope(&'static str),
}

impl ValidationError {
    /// The wire code for this error.
    pub fn code(&self) -> pb::ErrorCode {
        match self {
            ValidationError::TextTooLong { .. } => pb::ErrorCode::TextTooLong,
            ValidationError::TooMany { .. } => pb::ErrorCode::LimitExceeded,
            _ => pb::ErrorCode::BadRequest,
        }
    }
}

impl From<ValidationError> for crate::ServerError {
    fn from(e: ValidationError) -> Self {
        crate::ServerError::new(e.code(), e.to_string())
    }
}

/// A message body: text within `max_chars`, a kind this version sends.
pub fn message_body(body: &pb::MessageBody, max_chars: usize) -> Result<(), ValidationError> {
    if let Some(env) = &body.encrypted {
        let outside = body.kind != pb::MessageKind::Text as i32
            || !body.text.is_empty()
            || body.reply_to_seq != 0
            || !body.attachments.is_empty();
        if outside {
            return Err(ValidationError::Envelope("content outside the envelope"));
        }
        return envelope(env);
    }
    if body.attachments.iter().any(|a| !a.file_key.is_empty()) {
        return Err(ValidationError::Envelope("a file key outside an envelope"));
    }
    let media_kind = [pb::MessageKind::Image, pb::MessageKind::File, pb::MessageKind::Video]
        .iter()
        .any(|k| *k as i32 == body.kind);
    // IMAGE, FILE and VIDEO only say how to show a message's attachments (§11.5).
    let kind_ok = body.kind == pb::MessageKind::Text as i32 || (media_kind && !body.attachments.is_empty());
    if !kind_ok {
        return Err(ValidationError::UnsupportedKind(body.kind));
    }
    count("attachments", body.attachments.len(), limits::MAX_ATTACHMENTS)?;
    for a in &body.attachments {
        media_id(&a.media_id)?;
        if !a.name.is_empty() {
            file_name(&a.name)?;
        }
    }
    if body.text.is_empty() && body.attachments.is_empty() {
        return Err(ValidationError::EmptyText);
    }
    // Cheap upper bound first: a string of n bytes has at most n characters.
    if body.text.len() > max_chars {
        let chars = body.text.chars().count();
        if chars > max_chars {
            return Err(ValidationError::TextTooLong { chars, max: max_chars });
        }
    }
    Ok(())
}

/// A backed-up message key (PROTOCOL.md §12.9): sizes and the message it names.
pub fn backup_key(k: &pb::BackupKey) -> Result<(), ValidationError> {
    use crate::e2ee::{BACKUP_CIPHERTEXT_BYTES, BACKUP_ENCAPSULATED_KEY_BYTES};
    if k.encapsulated_key.len() != BACKUP_ENCAPSULATED_KEY_BYTES || k.ciphertext.len() != BACKUP_CIPHERTEXT_BYTES {
        return Err(ValidationError::Envelope(
            "a backed-up key is a 32-byte encapsulated key and a 48-byte ciphertext",
        ));
    }
    client_msg_id(&k.client_msg_id)
}

/// The shape of an end-to-end envelope (PROTOCOL.md §12.4); whether its keys cover the
/// right devices is the conversation's check (§12.5).
pub fn envelope(env: &pb::Envelope) -> Result<(), ValidationError> {
    use crate::e2ee::{ENVELOPE_VERSION, MIN_BUCKET, NONCE_BYTES, PUBLIC_KEY_BYTES};
    let bad = ValidationError::Envelope;
    if env.version != ENVELOPE_VERSION {
        return Err(bad("unknown envelope version"));
    }
    if env.sender_key.len() != PUBLIC_KEY_BYTES || env.nonce.len() != NONCE_BYTES {
        return Err(bad("sender_key is 32 bytes and nonce 24"));
    }
    // Padded to a bucket (§12.4), plus the 16-byte tag: sizes leak only rounded.
    let padded = env.ciphertext.len().saturating_sub(16);
    if padded < MIN_BUCKET || !padded.is_power_of_two() {
        return Err(bad("the ciphertext is not padded to a bucket"));
    }
    if env.keys.is_empty() {
        return Err(bad("no wrapped keys"));
    }
    count("wrapped keys", env.keys.len(), limits::MAX_WRAPPED_KEYS)?;
    for k in &env.keys {
        if k.identity_key.len() != PUBLIC_KEY_BYTES || k.olm_type > 1 {
            return Err(bad("a wrapped key names a 32-byte identity key and Olm type 0 or 1"));
        }
        if k.olm_body.is_empty() || k.olm_body.len() > limits::MAX_OLM_BODY_BYTES {
            return Err(bad("a wrapped key's Olm message is 1 to 4096 bytes"));
        }
    }
    count("attachments", env.media_ids.len(), limits::MAX_ATTACHMENTS)?;
    for m in &env.media_ids {
        media_id(m)?;
    }
    Ok(())
}

/// A file name as shown to others (PROTOCOL.md §11.1): never a path.
pub fn file_name(name: &str) -> Result<(), ValidationError> {
    let ok = (1..=limits::MAX_FILE_NAME_BYTES).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    ok.then_some(()).ok_or(ValidationError::FileName)
}

/// A declared content type: `type/subtype` of token characters (parameters allowed).
pub fn mime(m: &str) -> Result<(), ValidationError> {
    let essence = m.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let ok = m.len() <= limits::MAX_MIME_BYTES
        && m.is_ascii()
        && !m.bytes().any(|b| b.is_ascii_control())
        && matches!(essence.split_once('/'), Some((t, s)) if token(t) && token(s));
    ok.then_some(()).ok_or(ValidationError::Mime)
}

/// A media or upload id: 22 characters of base64url (128 bits).
pub fn media_id(id: &str) -> Result<(), ValidationError> {
    let ok = id.len() == 22 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(()).ok_or(ValidationError::MediaId)
}

/// A `SetProfile`'s fields (PROTOCOL.md §5.15): display name and status within their
/// lengths and without control characters, the avatar as [`avatar`] says.
pub fn set_profile(p: &pb::SetProfile) -> Result<(), ValidationError> {
    let plain = |s: &str, max: usize| s.chars().count() <= max && !s.chars().any(char::is_control);
    if p.display_name
        .as_deref()
        .is_some_and(|n| !plain(n, limits::MAX_DISPLAY_NAME_CHARS))
    {
        return Err(ValidationError::Profile(
            "display name is at most 64 characters without control characters",
        ));
    }
    if p.status.as_deref().is_some_and(|n| !plain(n, limits::MAX_STATUS_CHARS)) {
        return Err(ValidationError::Profile(
            "status is at most 140 characters without control characters",
        ));
    }
    p.avatar.as_deref().map_or(Ok(()), avatar)
}

/// An avatar: empty (none), an `https://` URL, or `media:<id>`; at most 1024 bytes, no
/// whitespace or control characters.
pub fn avatar(a: &str) -> Result<(), ValidationError> {
    let clean = a.len() <= limits::MAX_AVATAR_REF_BYTES && !a.chars().any(|c| c.is_control() || c.is_whitespace());
    let shape = a.is_empty()
        || a.strip_prefix("https://").is_some_and(|rest| !rest.is_empty())
        || a.strip_prefix("media:").is_some_and(|id| media_id(id).is_ok());
    (clean && shape).then_some(()).ok_or(ValidationError::Profile(
        "avatar is an https URL or media:<id> of at most 1024 bytes",
    ))
}

/// A username (PROTOCOL.md §5.1).
pub fn username(name: &str) -> Result<(), ValidationError> {
    let ok = limits::USERNAME_CHARS.contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    ok.then_some(()).ok_or(ValidationError::Username)
}

/// A password's length.
pub fn password(pw: &str) -> Result<(), ValidationError> {
    limits::PASSWORD_BYTES
        .contains(&pw.len())
        .then_some(())
        .ok_or(ValidationError::Password)
}

/// A client message id.
pub fn client_msg_id(id: &str) -> Result<(), ValidationError> {
    let ok = !id.is_empty()
        && id.len() <= limits::MAX_CLIENT_MSG_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then_some(()).ok_or(ValidationError::ClientMsgId)
}

/// A group name or device name.
pub fn name(name: &str) -> Result<(), ValidationError> {
    let chars = name.chars().count();
    let ok = (1..=limits::MAX_NAME_CHARS).contains(&chars) && !name.chars().any(char::is_control);
    ok.then_some(()).ok_or(ValidationError::Name)
}

/// A channel name.
pub fn channel_name(name: &str) -> Result<(), ValidationError> {
    let ok = limits::CHANNEL_NAME_CHARS.contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ok.then_some(()).ok_or(ValidationError::ChannelName)
}

/// A reaction: one emoji (possibly a ZWJ sequence, with modifiers, variation selectors,
/// keycaps or flag pairs), at most [`limits::MAX_EMOJI_BYTES`] bytes.
pub fn emoji(s: &str) -> Result<(), ValidationError> {
    fn pictographic(c: char) -> bool {
        matches!(c as u32,
            0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2300..=0x23FF | 0x2B00..=0x2BFF
            | 0x2190..=0x21FF | 0x3030 | 0x303D | 0x3297 | 0x3299 | 0x00A9 | 0x00AE | 0x2122 | 0x2139
            | 0x203C | 0x2049 | 0x24C2 | 0x25AA..=0x25FE | 0x2934 | 0x2935)
    }
    fn joiner(c: char) -> bool {
        // ZWJ, variation selectors, keycap, tag characters (subdivision flags).
        matches!(c as u32, 0x200D | 0xFE0E | 0xFE0F | 0x20E3 | 0xE0020..=0xE007F)
    }
    let first = s.chars().next();
    let keycap =
        s.chars().any(|c| c as u32 == 0x20E3) && first.is_some_and(|c| c.is_ascii_digit() || c == '#' || c == '*');
    let ok = !s.is_empty()
        && s.len() <= limits::MAX_EMOJI_BYTES
        && (keycap || first.is_some_and(pictographic))
        && s.chars()
            .enumerate()
            .all(|(i, c)| pictographic(c) || joiner(c) || (i == 0 && keycap));
    ok.then_some(()).ok_or(ValidationError::Emoji)
}

/// A list's length.
pub fn count(what: &'static str, len: usize, max: usize) -> Result<(), ValidationError> {
    if len > max {
        Err(ValidationError::TooMany { what, len, max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limit_counts_characters_not_bytes() {
        let body = |t: String| pb::MessageBody {
            text: t,
            ..Default::default()
        };
        assert!(message_body(&body("é".repeat(10)), 10).is_ok());
        assert_eq!(
            message_body(&body("é".repeat(11)), 10),
            Err(ValidationError::TextTooLong { chars: 11, max: 10 })
        );
        assert_eq!(message_body(&body(String::new()), 10), Err(ValidationError::EmptyText));
    }

    #[test]
    fn usernames() {
        assert!(username("alice").is_ok());
        assert!(username("a.b-c_9").is_ok());
        for bad in ["al", "Alice", "_alice", "al ice", &"a".repeat(33)] {
            assert_eq!(username(bad), Err(ValidationError::Username), "{bad}");
        }
    }

    #[test]
    fn emojis() {
        for good in ["👍", "❤️", "👩‍👩‍👧", "👍🏽", "🇫🇷", "1️⃣", "🏴‍☠️"] {
            assert!(emoji(good).is_ok(), "{good}");
        }
        for bad in ["", "a", "ok", "👍a", "1", &"👍".repeat(9), " 👍"] {
            assert_eq!(emoji(bad), Err(ValidationError::Emoji), "{bad:?}");
        }
    }

    #[test]
    fn client_msg_ids() {
        assert!(client_msg_id("abc-DEF_123").is_ok());
        assert!(client_msg_id("").is_err());
        assert!(client_msg_id("a b").is_err());
        assert!(client_msg_id(&"x".repeat(65)).is_err());
    }
}
