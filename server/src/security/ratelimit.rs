//! Rate limits per user and per IP (GCRA, via `governor`): login and registration attempts,
//! sends and typing. A refusal is the typed `RATE_LIMITED` error with `retry_after_ms`, which
//! the SDK honours before retrying (PROTOCOL.md §9). Owns no connection state.
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use natter_protocol::pb::ErrorCode;
use natter_protocol::{ServerError, UserId};
use serde::{Deserialize, Serialize};

/// Rates, all configurable (and reloadable: SIGHUP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// Login attempts per username per minute (brute force against one account).
    pub login_per_minute_per_user: u32,
    /// Login attempts per client IP per minute (spraying many accounts).
    pub login_per_minute_per_ip: u32,
    /// Registrations per client IP per minute.
    pub register_per_minute_per_ip: u32,
    /// Sustained sends per user per second.
    pub sends_per_second_per_user: u32,
    /// Sends a user may burst above the sustained rate.
    pub send_burst_per_user: u32,
    /// Typing notices per user per second.
    pub typing_per_second_per_user: u32,
    /// Push registrations and removals per user per minute.
    pub push_changes_per_minute_per_user: u32,
    /// Searches (messages, users, channels) per user per second.
    pub searches_per_second_per_user: u32,
    /// Searches a user may burst above the sustained rate.
    pub search_burst_per_user: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            login_per_minute_per_user: 10,
            login_per_minute_per_ip: 60,
            register_per_minute_per_ip: 20,
            sends_per_second_per_user: 50,
            send_burst_per_user: 200,
            typing_per_second_per_user: 5,
            push_changes_per_minute_per_user: 10,
            searches_per_second_per_user: 10,
            search_burst_per_user: 20,
        }
    }
}

/// The server's limiters, replaceable while it runs ([`RateLimits::reconfigure`], SIGHUP).
#[derive(Debug)]
pub struct RateLimits {
    limiters: std::sync::RwLock<Limiters>,
    /// Refusals by limit (`natter_rate_limited_total`).
    metrics: std::sync::Arc<crate::ops::Metrics>,
}

#[derive(Debug)]
struct Limiters {
    login_user: DefaultKeyedRateLimiter<String>,
    login_ip: DefaultKeyedRateLimiter<IpAddr>,
    register_ip: DefaultKeyedRateLimiter<IpAddr>,
    sends: DefaultKeyedRateLimiter<UserId>,
    typing: DefaultKeyedRateLimiter<UserId>,
    push: DefaultKeyedRateLimiter<UserId>,
    search: DefaultKeyedRateLimiter<UserId>,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("at least 1")
}

impl Limiters {
    fn new(c: &RateConfig) -> Limiters {
        Limiters {
            login_user: DefaultKeyedRateLimiter::keyed(Quota::per_minute(nz(c.login_per_minute_per_user))),
            login_ip: DefaultKeyedRateLimiter::keyed(Quota::per_minute(nz(c.login_per_minute_per_ip))),
            register_ip: DefaultKeyedRateLimiter::keyed(Quota::per_minute(nz(c.register_per_minute_per_ip))),
            sends: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(nz(c.sends_per_second_per_user)).allow_burst(nz(c.send_burst_per_user)),
            ),
            typing: DefaultKeyedRateLimiter::keyed(Quota::per_second(nz(c.typing_per_second_per_user))),
            push: DefaultKeyedRateLimiter::keyed(Quota::per_minute(nz(c.push_changes_per_minute_per_user))),
            search: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(nz(c.searches_per_second_per_user)).allow_burst(nz(c.search_burst_per_user)),
            ),
        }
    }
}

fn refuse<K: Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>, key: &K, what: &str) -> Result<(), ServerError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait: Duration = not_until.wait_time_from(DefaultClock::default().now());
        ServerError {
            code: ErrorCode::RateLimited,
            message: format!("too many {what}; retry later"),
            retry_after_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1),
            device_mismatch: None,
        }
    })
}

impl RateLimits {
    /// Limiters with these rates.
    pub fn new(c: &RateConfig, metrics: std::sync::Arc<crate::ops::Metrics>) -> Self {
        RateLimits {
            limiters: std::sync::RwLock::new(Limiters::new(c)),
            metrics,
        }
    }

    /// New rates from now on (a reload). Counts start afresh: a burst allowance comes back.
    pub fn reconfigure(&self, c: &RateConfig) {
        *self.limiters.write().expect("rate limits lock") = Limiters::new(c);
    }

    /// `key` against the limiter `pick` chooses (named `limit` in metrics); refusals are
    /// counted.
    fn check<K: Hash + Eq + Clone>(
        &self,
        pick: impl FnOnce(&Limiters) -> &DefaultKeyedRateLimiter<K>,
        limit: &'static str,
        key: &K,
        what: &str,
    ) -> Result<(), ServerError> {
        let limiters = self.limiters.read().expect("rate limits lock");
        refuse(pick(&limiters), key, what).inspect_err(|_| {
            self.metrics
                .rate_limited
                .get_or_create(&crate::ops::metrics::LimitLabel { limit })
                .inc();
        })
    }

    /// A login attempt from `ip` for `username` (counted whether or not it succeeds).
    pub fn login(&self, ip: IpAddr, username: &str) -> Result<(), ServerError> {
        self.check(|l| &l.login_ip, "login_ip", &ip, "login attempts from this address")?;
        self.check(
            |l| &l.login_user,
            "login_user",
            &username.to_string(),
            "login attempts for this account",
        )
    }

    /// A product-token login from `ip` (PROTOCOL.md §5.13): the address's login budget;
    /// a forged token costs a signature check, never a password hash.
    pub fn token_login(&self, ip: IpAddr) -> Result<(), ServerError> {
        self.check(|l| &l.login_ip, "login_ip", &ip, "login attempts from this address")
    }

    /// A registration from `ip`.
    pub fn register(&self, ip: IpAddr) -> Result<(), ServerError> {
        self.check(
            |l| &l.register_ip,
            "register_ip",
            &ip,
            "registrations from this address",
        )
    }

    /// A send (or other message change) by `user`.
    pub fn send(&self, user: UserId) -> Result<(), ServerError> {
        self.check(|l| &l.sends, "sends", &user, "messages")
    }

    /// A typing notice by `user`.
    pub fn typing(&self, user: UserId) -> Result<(), ServerError> {
        self.check(|l| &l.typing, "typing", &user, "typing notices")
    }

    /// A push registration or removal by `user`.
    pub fn push_change(&self, user: UserId) -> Result<(), ServerError> {
        self.check(|l| &l.push, "push_changes", &user, "push registration changes")
    }

    /// A search (messages, users or channels) by `user`.
    pub fn search(&self, user: UserId) -> Result<(), ServerError> {
        self.check(|l| &l.search, "searches", &user, "searches")
    }

    /// Forget keys whose limits have fully recovered (bounds memory).
    pub fn retain_recent(&self) {
        let l = self.limiters.read().expect("rate limits lock");
        l.login_user.retain_recent();
        l.login_ip.retain_recent();
        l.register_ip.retain_recent();
        l.sends.retain_recent();
        l.typing.retain_recent();
        l.push.retain_recent();
        l.search.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_over_the_quota_is_refused_with_a_retry_time() {
        let metrics = std::sync::Arc::new(crate::ops::Metrics::new());
        let r = RateLimits::new(
            &RateConfig {
                login_per_minute_per_user: 3,
                ..Default::default()
            },
            metrics.clone(),
        );
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            r.login(ip, "alice").unwrap();
        }
        let e = r.login(ip, "alice").unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(
            e.retry_after_ms > 0 && e.retry_after_ms <= 20_000,
            "{}",
            e.retry_after_ms
        );
        r.login(ip, "bob").expect("another account is not affected");
        r.reconfigure(&RateConfig {
            login_per_minute_per_user: 5,
            ..Default::default()
        });
        r.login(ip, "alice").expect("new rates, counted afresh");
        assert!(
            metrics
                .encode(false)
                .contains("natter_rate_limited_total{limit=\"login_user\"} 1"),
            "the refusal is counted by its limit"
        );
    }
}
