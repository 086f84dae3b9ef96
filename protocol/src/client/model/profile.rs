//! The app-facing profile (PROTOCOL.md §5.15): what a user shows others beside their
//! username, converted once from the wire type.
use crate::pb;

record! {
    /// A user's profile.
    pub struct Profile {
        /// Who.
        pub user_id: u64,
        /// Their username.
        pub username: String,
        /// Display name; empty: show the username.
        pub display_name: String,
        /// "", an https URL, or `media:<id>` (show its thumbnail: `mediaUrl(id,
        /// "thumbnail")` / `media_url`).
        pub avatar: String,
        /// Status text.
        pub status: String,
        /// A bot driven by the product's backend.
        pub bot: bool,
        /// Last change, ms since the epoch: of two versions, the later one holds.
        pub updated_ms: u64,
    }
}

impl Profile {
    /// The name to show: the display name, else the username.
    pub fn shown_name(&self) -> &str {
        if self.display_name.is_empty() {
            &self.username
        } else {
            &self.display_name
        }
    }

    /// The avatar's media id, when the avatar is an uploaded image.
    pub fn avatar_media_id(&self) -> Option<&str> {
        self.avatar.strip_prefix("media:")
    }
}

impl From<pb::UserProfile> for Profile {
    fn from(p: pb::UserProfile) -> Self {
        Profile {
            user_id: p.user_id,
            username: p.username,
            display_name: p.display_name,
            avatar: p.avatar,
            status: p.status,
            bot: p.bot,
            updated_ms: p.updated_ms,
        }
    }
}
