//! Domain newtypes for the ids on the wire. The wire carries them as bare integers and
//! strings; everything above the codec uses these so a `Seq` cannot be passed as a user.
use std::fmt;

macro_rules! id_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

id_u64!(
    /// An account.
    UserId
);
id_u64!(
    /// One logged-in device (one access token) of a user.
    DeviceId
);
id_u64!(
    /// A direct conversation, group or channel.
    ConversationId
);
id_u64!(
    /// Position in a conversation's total order: gap-free, starting at 1.
    Seq
);
id_u64!(
    /// Matches a response to its request on one connection.
    RequestId
);

impl Seq {
    /// The seq after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// The client-chosen idempotency key of a send (PROTOCOL.md §6.3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct ClientMsgId(pub String);

impl ClientMsgId {
    /// A fresh id from 16 random bytes supplied by the caller (the core has no RNG).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        let mut s = String::with_capacity(32);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        ClientMsgId(s)
    }

    /// The id as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
