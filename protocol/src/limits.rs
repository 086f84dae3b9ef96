//! Every size and count the protocol limits, one constant each (PROTOCOL.md §9).
//!
//! The server enforces these (some are configurable upward or downward and then advertised
//! in `Welcome.limits`); clients check them before sending so bad input fails locally with
//! the same typed error the server would give.
use std::ops::RangeInclusive;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// QUIC ALPN of natter version 1.
pub const ALPN: &[u8] = b"natter/1";
/// Largest encoded frame on any stream, length prefix excluded. Checked before allocating.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Largest WebSocket message a client may send: a frame plus its channel and length prefixes.
pub const MAX_WS_MESSAGE_BYTES: usize = MAX_FRAME_BYTES + 16;
/// Largest frame after zstd decompression.
pub const MAX_DECOMPRESSED_BYTES: usize = 4 << 20;
/// Frames at least this large are sent compressed when compression makes them smaller.
pub const COMPRESS_THRESHOLD_BYTES: usize = 16 * 1024;
/// Message text, in Unicode scalar values.
pub const MAX_TEXT_CHARS: usize = 100_000;
/// Members of a group, owner included.
pub const MAX_GROUP_MEMBERS: usize = 100;
/// Members of a channel.
pub const MAX_CHANNEL_MEMBERS: usize = 10_000;
/// Events in one history page.
pub const MAX_HISTORY_PAGE: u32 = 200;
/// How long a disconnected session can be resumed.
pub const RESUME_WINDOW_SECS: u32 = 120;
/// Requests one connection may have in flight.
pub const MAX_REQUESTS_IN_FLIGHT: u32 = 64;
/// Authenticated connections one user may hold at once (all devices).
pub const MAX_CONNECTIONS_PER_USER: u32 = 32;
/// Connections (authenticated or not) from one IP address at once.
pub const MAX_CONNECTIONS_PER_IP: u32 = 1024;
/// Bytes in a client message id.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;
/// Characters in a group name or device name.
pub const MAX_NAME_CHARS: usize = 64;
/// Characters in a username.
pub const USERNAME_CHARS: RangeInclusive<usize> = 3..=32;
/// Bytes in a password.
pub const PASSWORD_BYTES: RangeInclusive<usize> = 8..=1024;
/// Characters in a channel name.
pub const CHANNEL_NAME_CHARS: RangeInclusive<usize> = 1..=64;
/// Usernames named in one CreateGroup or AddMembers request.
pub const MAX_USERNAMES_PER_REQUEST: usize = 100;
/// Cursors in one Authenticate request.
pub const MAX_CURSORS: usize = 10_000;
/// Bytes of the `client` string in Hello.
pub const MAX_CLIENT_NAME_BYTES: usize = 128;
/// Bytes of an access or resume token.
pub const MAX_TOKEN_BYTES: usize = 128;
/// Longest slow-mode interval (6 hours).
pub const MAX_SLOW_MODE_SECS: u32 = 6 * 3600;
/// Longest retention a conversation may set, seconds (100 years; 0 means forever).
pub const MAX_RETENTION_SECS: u64 = 36_500 * 86_400;
/// Characters of a report's reason.
pub const MAX_REPORT_REASON_CHARS: usize = 500;
/// Characters of a display name (PROTOCOL.md §5.15).
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Characters of a profile's status text.
pub const MAX_STATUS_CHARS: usize = 140;
/// Bytes of an avatar URL or `media:<id>`.
pub const MAX_AVATAR_REF_BYTES: usize = 1024;
/// Bytes of an avatar image upload (`CreateUpload` with conversation 0).
pub const MAX_AVATAR_BYTES: u64 = 10 * 1024 * 1024;
/// Users in one `GetProfiles`.
pub const MAX_PROFILES_PER_REQUEST: usize = 100;
/// Bytes of a product token (a JWT, PROTOCOL.md §5.13).
pub const MAX_PRODUCT_TOKEN_BYTES: usize = 8192;
/// How often clients without keep-alives of their own (browsers: WebTransport, WebSocket)
/// send a presence heartbeat, which keeps their connection alive (PROTOCOL.md §5.11).
pub const HEARTBEAT_INTERVAL_MS: u32 = 25_000;
/// How long a QUIC client stays silent before it sends a PING (PROTOCOL.md §3.1): inside
/// the 30 s that the strictest common NAT keeps an idle UDP binding, and rare enough that
/// 10,000 idle connections cost the server well under 1 % of a core.
pub const KEEP_ALIVE_MS: u32 = 25_000;
/// The server's idle timeout: a connection silent this long is dropped (two keep-alives
/// and a margin).
pub const IDLE_TIMEOUT_MS: u32 = 60_000;
/// The SDK's idle timeout: a dead path (lost network, a blackhole) is given up within this
/// long when nothing else tells (a network change does; a restarted node's stateless reset
/// does at the next keep-alive).
pub const CLIENT_IDLE_TIMEOUT_MS: u32 = IDLE_TIMEOUT_MS;
/// How long a typing indicator shows unless renewed.
pub const TYPING_TTL_MS: u32 = 6_000;
/// Largest datagram payload natter sends.
pub const MAX_DATAGRAM_BYTES: usize = 1024;
/// Bytes of one reaction emoji.
pub const MAX_EMOJI_BYTES: usize = 32;
/// Unread counts stop counting here.
pub const MAX_UNREAD_COUNT: u32 = 1000;

/// Largest file one upload may declare (PROTOCOL.md §11).
pub const MAX_UPLOAD_BYTES: u64 = 1 << 30;
/// The pieces an upload is stored in (and resumes between).
pub const UPLOAD_CHUNK_BYTES: u32 = 1 << 20;
/// Upload streams one connection may have open at once.
pub const MAX_UPLOAD_STREAMS: u32 = 4;
/// An unfinished upload is deleted this long after it was created.
pub const UPLOAD_EXPIRY_SECS: u32 = 24 * 3600;
/// Bytes of media one user may hold.
pub const MEDIA_QUOTA_BYTES: u64 = 10 << 30;
/// Attachments in one message.
pub const MAX_ATTACHMENTS: usize = 10;
/// Wrapped message keys in one envelope (PROTOCOL.md §12.4): the devices of both members.
pub const MAX_WRAPPED_KEYS: usize = 256;
/// Bytes of one wrapped key's Olm message.
pub const MAX_OLM_BODY_BYTES: usize = 4096;
/// One-time keys the server holds per device (PROTOCOL.md §12.1).
pub const MAX_ONE_TIME_KEYS: usize = 100;
/// Bytes of one `SendToDevice` payload (a verification step, §12.10).
pub const MAX_TO_DEVICE_BYTES: usize = 4096;
/// Backed-up keys in one `PutBackupKeys`, and in one `BackupKeys` page (§12.9).
pub const MAX_BACKUP_KEYS: usize = 200;
/// Bytes of an attachment's file name.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// Bytes of a declared content type.
pub const MAX_MIME_BYTES: usize = 127;

/// The limits this crate's defaults advertise, as the wire message.
pub fn default_limits() -> crate::pb::Limits {
    crate::pb::Limits {
        max_frame_bytes: MAX_FRAME_BYTES as u32,
        max_text_chars: MAX_TEXT_CHARS as u32,
        max_group_members: MAX_GROUP_MEMBERS as u32,
        max_channel_members: MAX_CHANNEL_MEMBERS as u32,
        max_history_page: MAX_HISTORY_PAGE,
        resume_window_secs: RESUME_WINDOW_SECS,
        max_requests_in_flight: MAX_REQUESTS_IN_FLIGHT,
        max_client_msg_id_bytes: MAX_CLIENT_MSG_ID_BYTES as u32,
        max_name_chars: MAX_NAME_CHARS as u32,
        max_decompressed_bytes: MAX_DECOMPRESSED_BYTES as u32,
        heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
        typing_ttl_ms: TYPING_TTL_MS,
        idle_timeout_ms: IDLE_TIMEOUT_MS,
        max_upload_bytes: MAX_UPLOAD_BYTES,
        upload_chunk_bytes: UPLOAD_CHUNK_BYTES,
        max_upload_streams: MAX_UPLOAD_STREAMS,
        upload_expiry_secs: UPLOAD_EXPIRY_SECS,
        media_quota_bytes: MEDIA_QUOTA_BYTES,
        max_attachments: MAX_ATTACHMENTS as u32,
        keep_alive_ms: KEEP_ALIVE_MS,
    }
}
