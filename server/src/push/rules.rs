//! A user's notification rules (PROTOCOL.md §13.2): stored with their push registrations,
//! (the record is `store::push::NotifyRules`), checked when a notification is decided — muted until a time (all, or one
//! conversation), a level (all, mentions only, nothing; per conversation or the user's),
//! and do-not-disturb hours in the user's time zone. Pure functions over the record.
use std::collections::BTreeMap;

use natter_protocol::pb::{self, ErrorCode, NotifyLevel};
use natter_protocol::ServerError;

pub use crate::store::push::{ConversationRule, NotifyRules};

/// Most conversations with a rule of their own.
pub const MAX_CONVERSATION_RULES: usize = 1000;
const DAY_MINUTES: u32 = 24 * 60;

fn bad(msg: impl Into<String>) -> ServerError {
    ServerError::new(ErrorCode::BadRequest, msg)
}

fn level(n: i32) -> Result<NotifyLevel, ServerError> {
    NotifyLevel::try_from(n).map_err(|_| bad(format!("unknown notify level {n}")))
}

/// An address lettre can send to, of sane length, with no header tricks.
fn plausible_email(s: &str) -> bool {
    s.len() <= 254 && !s.chars().any(|c| c.is_control() || c == ',' || c == '<') && s.parse::<lettre::Address>().is_ok()
}

impl NotifyRules {
    /// Rules from the wire, checked: known levels, minutes within a day, a time zone this
    /// server knows, at most [`MAX_CONVERSATION_RULES`] conversations, each once.
    pub fn from_wire(s: pb::NotifySettings) -> Result<Self, ServerError> {
        level(s.level)?;
        if s.dnd_start_minute >= DAY_MINUTES || s.dnd_end_minute >= DAY_MINUTES {
            return Err(bad("do-not-disturb minutes are 0..1440"));
        }
        if !s.time_zone.is_empty() && jiff::tz::TimeZone::get(&s.time_zone).is_err() {
            return Err(bad(format!("unknown time zone {:?}", s.time_zone)));
        }
        if !s.email.is_empty() && !plausible_email(&s.email) {
            return Err(bad("email must be an address like name@example.com"));
        }
        if s.conversations.len() > MAX_CONVERSATION_RULES {
            return Err(bad(format!("at most {MAX_CONVERSATION_RULES} conversation rules")));
        }
        let mut conversations = BTreeMap::new();
        for c in s.conversations {
            level(c.level)?;
            let rule = ConversationRule {
                level: c.level,
                mute_until_ms: c.mute_until_ms,
            };
            if conversations.insert(c.conversation_id, rule).is_some() {
                return Err(bad(format!("conversation {} has two rules", c.conversation_id)));
            }
        }
        Ok(NotifyRules {
            level: s.level,
            mute_until_ms: s.mute_until_ms,
            time_zone: s.time_zone,
            email: s.email,
            no_email_digest: s.no_email_digest,
            // Only the confirmation link sets it (Push::set_settings keeps it for an
            // unchanged address).
            email_verified: false,
            dnd_start_minute: s.dnd_start_minute,
            dnd_end_minute: s.dnd_end_minute,
            conversations,
        })
    }

    /// The rules on the wire.
    pub fn to_wire(&self) -> pb::NotifySettings {
        pb::NotifySettings {
            level: self.level,
            mute_until_ms: self.mute_until_ms,
            time_zone: self.time_zone.clone(),
            dnd_start_minute: self.dnd_start_minute,
            dnd_end_minute: self.dnd_end_minute,
            email: self.email.clone(),
            no_email_digest: self.no_email_digest,
            email_verified: self.email_verified,
            conversations: self
                .conversations
                .iter()
                .map(|(id, r)| pb::ConversationNotify {
                    conversation_id: *id,
                    level: r.level,
                    mute_until_ms: r.mute_until_ms,
                })
                .collect(),
        }
    }

    /// Whether a message in `conversation` that does (or does not) mention the user
    /// notifies at `now_ms`.
    pub fn allows(&self, conversation: u64, mentioned: bool, now_ms: u64) -> bool {
        if self.mute_until_ms > now_ms {
            return false;
        }
        let conv = self.conversations.get(&conversation);
        if conv.is_some_and(|c| c.mute_until_ms > now_ms) {
            return false;
        }
        let level = match conv.map(|c| c.level).unwrap_or(0) {
            0 => self.level,
            l => l,
        };
        match NotifyLevel::try_from(level).unwrap_or(NotifyLevel::All) {
            NotifyLevel::None => return false,
            NotifyLevel::Mentions if !mentioned => return false,
            _ => {}
        }
        !self.in_dnd(now_ms)
    }

    /// Whether `now_ms` falls in the do-not-disturb hours, in the user's time zone.
    fn in_dnd(&self, now_ms: u64) -> bool {
        let (start, end) = (self.dnd_start_minute, self.dnd_end_minute);
        if start == end {
            return false;
        }
        let tz = match self.time_zone.as_str() {
            "" => jiff::tz::TimeZone::UTC,
            name => jiff::tz::TimeZone::get(name).unwrap_or(jiff::tz::TimeZone::UTC),
        };
        let Ok(at) = jiff::Timestamp::from_millisecond(now_ms as i64) else {
            return false;
        };
        let local = at.to_zoned(tz);
        let minute = local.hour() as u32 * 60 + local.minute() as u32;
        if start < end {
            (start..end).contains(&minute)
        } else {
            minute >= start || minute < end
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-07-01 at `hh:mm` UTC, in ms.
    fn utc(hh: u64, mm: u64) -> u64 {
        1_782_864_000_000 + (hh * 60 + mm) * 60_000
    }

    #[test]
    fn levels_mutes_and_conversation_rules() {
        let mut r = NotifyRules::default();
        assert!(r.allows(1, false, utc(12, 0)), "all by default");
        r.level = NotifyLevel::Mentions as i32;
        assert!(!r.allows(1, false, utc(12, 0)));
        assert!(r.allows(1, true, utc(12, 0)));
        r.conversations.insert(
            2,
            ConversationRule {
                level: NotifyLevel::All as i32,
                mute_until_ms: 0,
            },
        );
        assert!(r.allows(2, false, utc(12, 0)), "the conversation's own level wins");
        r.conversations.get_mut(&2).unwrap().mute_until_ms = utc(13, 0);
        assert!(!r.allows(2, true, utc(12, 0)), "muted until 13:00");
        assert!(r.allows(2, false, utc(13, 0)), "and no longer");
        r.conversations.get_mut(&2).unwrap().level = NotifyLevel::None as i32;
        assert!(!r.allows(2, true, utc(14, 0)));
        r.mute_until_ms = utc(15, 0);
        assert!(!r.allows(1, true, utc(14, 0)), "everything muted");
    }

    #[test]
    fn do_not_disturb_is_in_the_users_time_zone_and_may_wrap_midnight() {
        let r = NotifyRules {
            time_zone: "Europe/Berlin".into(), // UTC+2 in July
            dnd_start_minute: 22 * 60,
            dnd_end_minute: 7 * 60,
            ..Default::default()
        };
        assert!(!r.allows(1, true, utc(20, 30)), "22:30 in Berlin");
        assert!(!r.allows(1, true, utc(4, 59)), "06:59 in Berlin");
        assert!(r.allows(1, true, utc(5, 0)), "07:00 in Berlin");
        assert!(r.allows(1, true, utc(19, 59)), "21:59 in Berlin");
        let day = NotifyRules {
            dnd_start_minute: 9 * 60,
            dnd_end_minute: 17 * 60,
            ..Default::default()
        };
        assert!(!day.allows(1, true, utc(9, 0)), "UTC when no zone is set");
        assert!(day.allows(1, true, utc(17, 0)));
    }

    #[test]
    fn settings_from_the_wire_are_checked() {
        let ok = pb::NotifySettings {
            level: NotifyLevel::Mentions as i32,
            time_zone: "America/New_York".into(),
            dnd_start_minute: 1380,
            dnd_end_minute: 420,
            conversations: vec![pb::ConversationNotify {
                conversation_id: 5,
                level: 0,
                mute_until_ms: 9,
            }],
            ..Default::default()
        };
        let r = NotifyRules::from_wire(ok.clone()).unwrap();
        assert_eq!(r.to_wire(), ok);
        for bad in [
            pb::NotifySettings { level: 9, ..ok.clone() },
            pb::NotifySettings {
                time_zone: "Mars/Olympus".into(),
                ..ok.clone()
            },
            pb::NotifySettings {
                dnd_end_minute: 1440,
                ..ok.clone()
            },
            pb::NotifySettings {
                conversations: vec![ok.conversations[0]; 2],
                ..ok.clone()
            },
        ] {
            assert_eq!(NotifyRules::from_wire(bad).unwrap_err().code, ErrorCode::BadRequest);
        }
    }
}
