//! natter-protocol: the wire shared by every natter implementation.
//!
//! Owns the types generated from `spec/natter.proto` ([`pb`]), the frame codec
//! ([`codec`]), the limits and input validation both ends enforce ([`limits`],
//! [`validate`]), domain newtypes ([`ids`]) and the sans-IO [`ClientSession`]
//! ([`session`]). It must not depend on sockets, async runtimes or clocks: it compiles to
//! `wasm32-unknown-unknown` and runs unchanged under quinn, in a browser and in fuzzers.
// No unsafe code of our own. The `uniffi` feature's derives generate the FFI scaffolding,
// which is unsafe by nature, so with that feature the lint is lifted for generated code.
#![cfg_attr(not(feature = "uniffi"), forbid(unsafe_code))]
#![cfg_attr(feature = "uniffi", allow(unsafe_code))]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod e2ee;
pub mod error;
pub mod ids;
pub mod limits;
pub mod mentions;
mod op_names;
pub mod search;
pub mod session;
pub mod timeline;
pub mod validate;
pub mod wsmux;

/// Types generated from `spec/natter.proto` (package `natter.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/natter.v1.rs"));
}

#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!();

pub use codec::{decode_frame, encode_frame, FrameDecoder, FrameError};
pub use error::ServerError;
pub use ids::{ClientMsgId, ConversationId, DeviceId, RequestId, Seq, UserId};
pub use session::{
    ClientSession, DeliveryState, MessageStatus, Millis, RequestError, SessionConfig, SessionError, SessionEvent,
    State, StreamKey,
};
