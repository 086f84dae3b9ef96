//! Every deadline the client session keeps, in one table: what each timer waits for, how
//! long, and whose number that is. The session never reads a clock; a timer is "now plus
//! [`ClientSession::delay`]", and [`ClientSession::poll_timeout`] is the earliest one that
//! is armed. Two deadlines come from the server per event instead of from this table: a
//! typing indicator shown expires at its signal's `expires_in_ms`, and a send refused with
//! `retry_after_ms` waits at least that long.
use super::ClientSession;

/// The session's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// A request without a response fails with `Timeout` (sends are re-sent instead).
    /// `SessionConfig::request_timeout_ms`.
    Request,
    /// A send refused with a transient error goes again; the server's `retry_after_ms`
    /// wins when longer. `SessionConfig::send_retry_ms`.
    SendRetry,
    /// A gap fetch that failed is tried again. `SessionConfig::send_retry_ms`.
    GapFetchRetry,
    /// The next presence heartbeat while authenticated (PROTOCOL.md §5.11). The server's
    /// `Limits.heartbeat_interval_ms`, at least 100 ms.
    Heartbeat,
    /// A repeated "typing" for the same conversation is sent again only after half the
    /// indicator's lifetime (PROTOCOL.md §5.12). The server's `Limits.typing_ttl_ms` / 2.
    TypingRenew,
    /// Delivery acknowledgements gather this long after the first event they cover
    /// (PROTOCOL.md §7.4). `SessionConfig::ack_delay_ms`.
    AckDelay,
}

impl ClientSession {
    /// How long `timer` waits, in ms.
    pub(crate) fn delay(&self, timer: Timer) -> u64 {
        match timer {
            Timer::Request => self.config.request_timeout_ms,
            Timer::SendRetry | Timer::GapFetchRetry => self.config.send_retry_ms,
            Timer::Heartbeat => u64::from(self.limits.heartbeat_interval_ms.max(100)),
            Timer::TypingRenew => u64::from(self.limits.typing_ttl_ms / 2),
            Timer::AckDelay => self.config.ack_delay_ms,
        }
    }

    /// When `timer`, started now, fires.
    pub(crate) fn deadline(&self, timer: Timer) -> super::Millis {
        self.now.plus(self.delay(timer))
    }
}
