//! What only the JS package has: its exceptions (`JsError`, the shape of rejected
//! promises), the transport notice, the server's discovery document and the transport
//! choice. Events and records are natter-protocol's app-facing model
//! ([`natter_protocol::client::model`]), shared with the Kotlin/Swift/Python bindings and
//! serialized as they are. Pure (no browser APIs), so it is tested natively and under
//! Node alike; every name here is part of the npm package's API (see `natter.d.ts`).
use natter_protocol::pb;
use natter_protocol::session::RequestError;
use natter_protocol::ServerError;
use serde::{Deserialize, Serialize};

/// The one event only the JS package has: which transport a (re)connection uses,
/// `{ type: "transport", name: "webtransport" | "websocket" }`. Every other event is the
/// shared [`natter_protocol::client::model::NatterEvent`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "transport")]
pub struct TransportEvent {
    /// "webtransport" or "websocket".
    pub name: &'static str,
}

/// An error as JavaScript sees it (also the shape of rejected promises: an `Error` with
/// these as properties).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsError {
    /// "RATE_LIMITED", "INVALID_CREDENTIALS", "NOT_MEMBER", … (the wire `ErrorCode`
    /// without its prefix) for server errors; "TIMEOUT", "CONNECTION_LOST",
    /// "INVALID", "CLOSED" for local ones.
    pub code: String,
    /// Human-readable.
    pub message: String,
    /// For RATE_LIMITED and SHUTTING_DOWN: when to retry.
    pub retry_after_ms: Option<u32>,
}

/// The wire name of an error code without its prefix ("RATE_LIMITED").
pub fn code_name(code: pb::ErrorCode) -> String {
    code.as_str_name().trim_start_matches("ERROR_CODE_").to_string()
}

impl From<&ServerError> for JsError {
    fn from(e: &ServerError) -> Self {
        JsError {
            code: code_name(e.code),
            message: e.message.clone(),
            retry_after_ms: (e.retry_after_ms > 0).then_some(e.retry_after_ms),
        }
    }
}

impl From<&RequestError> for JsError {
    fn from(e: &RequestError) -> Self {
        let code = match e {
            RequestError::Server(s) => return s.into(),
            RequestError::ConnectionLost => "CONNECTION_LOST",
            RequestError::Timeout => "TIMEOUT",
            _ => "INVALID",
        };
        JsError {
            code: code.into(),
            message: e.to_string(),
            retry_after_ms: None,
        }
    }
}

impl JsError {
    /// A local error.
    pub fn local(code: &str, message: impl Into<String>) -> Self {
        JsError {
            code: code.into(),
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// `/natter.json` (server/src/web.rs).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    /// WebTransport, if the server offers it.
    pub webtransport: Option<WebTransportInfo>,
    /// WebSocket.
    pub websocket: WebSocketInfo,
}

/// Where WebTransport is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebTransportInfo {
    /// `https://host:port/path`.
    pub url: String,
    /// Hex SHA-256 hashes for `serverCertificateHashes` (empty: CA-issued certificate).
    #[serde(default)]
    pub certificate_hashes: Vec<String>,
}

impl WebTransportInfo {
    /// The hashes as bytes; malformed ones are skipped (the browser would refuse them).
    pub fn hash_bytes(&self) -> Vec<Vec<u8>> {
        self.certificate_hashes
            .iter()
            .filter_map(|h| hex::decode(h).ok().filter(|b| b.len() == 32))
            .collect()
    }
}

/// Where WebSocket is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct WebSocketInfo {
    /// `ws(s)://host:port/ws`.
    pub url: String,
}

/// Which transport the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportChoice {
    /// WebTransport if the browser and server have it, WebSocket otherwise.
    Auto,
    /// Only WebTransport.
    WebTransport,
    /// Only WebSocket.
    WebSocket,
}

impl TransportChoice {
    /// Parse the `transport` option.
    pub fn parse(s: Option<&str>) -> Result<Self, JsError> {
        match s.unwrap_or("auto") {
            "auto" => Ok(TransportChoice::Auto),
            "webtransport" => Ok(TransportChoice::WebTransport),
            "websocket" => Ok(TransportChoice::WebSocket),
            other => Err(JsError::local(
                "INVALID",
                format!("transport must be auto, webtransport or websocket, not {other:?}"),
            )),
        }
    }

    /// What to try, in order, on the next connect. `wt_failed`: WebTransport already failed
    /// on this client (then `Auto` goes straight to WebSocket rather than paying the
    /// timeout again on every reconnect).
    pub fn plan(self, browser_has_wt: bool, discovery: &Discovery, wt_failed: bool) -> Vec<Transport> {
        let wt_possible = browser_has_wt && discovery.webtransport.is_some();
        match self {
            TransportChoice::WebTransport => vec![Transport::WebTransport],
            TransportChoice::WebSocket => vec![Transport::WebSocket],
            TransportChoice::Auto if wt_possible && !wt_failed => vec![Transport::WebTransport, Transport::WebSocket],
            TransportChoice::Auto => vec![Transport::WebSocket],
        }
    }
}

/// A transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/3 WebTransport.
    WebTransport,
    /// WebSocket (natter.v1).
    WebSocket,
}

impl Transport {
    /// "webtransport" / "websocket".
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebTransport => "webtransport",
            Transport::WebSocket => "websocket",
        }
    }
}

/// What an answer to a tus `PATCH` (PROTOCOL.md §11.6) means for the upload loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TusOutcome {
    /// The piece is stored: the server's offset now.
    Stored(u64),
    /// The offset was not the server's (409), or the upload is busy on another
    /// connection (423), or the server is briefly unable (503): ask where it stands.
    AskAgain,
    /// Refused for good (or an answer that is not tus).
    Failed(JsError),
}

/// Read a tus `PATCH` answer: its status, its `Upload-Offset`, its `Natter-Error` code
/// name and its body (the message).
pub fn tus_outcome(status: u16, upload_offset: Option<&str>, natter_error: Option<&str>, body: &str) -> TusOutcome {
    match status {
        200..=299 => match upload_offset.and_then(|o| o.trim().parse().ok()) {
            Some(offset) => TusOutcome::Stored(offset),
            None => TusOutcome::Failed(JsError::local("UNEXPECTED", "a tus answer without Upload-Offset")),
        },
        409 | 423 | 503 => TusOutcome::AskAgain,
        _ => {
            let code = natter_error.map_or_else(|| format!("HTTP_{status}"), str::to_string);
            let message = body.trim();
            let message = message
                .strip_prefix(&format!("{code}: "))
                .unwrap_or(message)
                .to_string();
            TusOutcome::Failed(JsError {
                code,
                message,
                retry_after_ms: None,
            })
        }
    }
}

/// A BlurHash placeholder (PROTOCOL.md §11.5) as `width`×`height` RGBA pixels, for a
/// canvas to show while the thumbnail loads.
pub fn blurhash_rgba(hash: &str, width: u32, height: u32) -> Result<Vec<u8>, JsError> {
    if width == 0 || height == 0 || width > 256 || height > 256 {
        return Err(JsError::local("INVALID", "a placeholder is 1 to 256 pixels each way"));
    }
    blurhash::decode(hash, width, height, 1.0).map_err(|e| JsError::local("INVALID", format!("not a BlurHash: {e}")))
}
/// base64url (with or without padding; plain base64 too) to bytes; None if it is not.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Bytes as base64url without padding.
pub fn b64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, x| (a << 8) | u32::from(*x)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        for n in 0..70u8 {
            let b: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unb64(&b64(&b)).unwrap(), b, "{n}");
        }
        assert_eq!(unb64("+/+/").unwrap(), unb64("-_-_").unwrap(), "plain base64 too");
        assert_eq!(unb64("a!b"), None);
    }
}
