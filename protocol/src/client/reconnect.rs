//! The reconnect policy (PROTOCOL.md §7.4, §7.6): how long to wait after a lost connection,
//! when the server's word overrides the backoff, and which node to try next.

/// Backoff, pauses and node rotation for one client. Time-free: the driver asks for the
/// next delay when a connection ends and sleeps it with its own timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconnect {
    min_ms: u64,
    max_ms: u64,
    backoff_ms: u64,
    /// Set by `GoAway` or an error with a retry time: wait exactly this long once.
    pause_ms: Option<u64>,
    /// Connections that ended so far (picks the next address).
    ended: usize,
}

impl Reconnect {
    /// A policy whose first delay is `min_ms`, doubling up to `max_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        Reconnect {
            min_ms,
            max_ms: max_ms.max(min_ms),
            backoff_ms: min_ms,
            pause_ms: None,
            ended: 0,
        }
    }

    /// A session was established (authenticated, or welcomed with nothing to
    /// authenticate): the backoff starts over. Not on a bare transport connect: a server
    /// that refuses us after the handshake must not be hammered.
    pub fn established(&mut self) {
        self.backoff_ms = self.min_ms;
    }

    /// The server asked us to wait `ms` before reconnecting.
    pub fn pause(&mut self, ms: u64) {
        self.pause_ms = Some(ms);
    }

    /// The connection ended (or could not be made): how long to wait before the next
    /// attempt. A pause the server asked for wins once; otherwise the backoff, which
    /// doubles for next time. The next attempt goes to the next address.
    pub fn next_delay(&mut self) -> u64 {
        self.ended += 1;
        let delay = self.pause_ms.take().unwrap_or(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms.saturating_mul(2)).min(self.max_ms);
        delay
    }

    /// Which of `n` addresses (the primary first, then its fallbacks) to connect to now:
    /// each ended connection moves on to the next, so a crashed or draining node's
    /// clients spread over the others.
    pub fn address(&self, n: usize) -> usize {
        self.ended % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::Reconnect;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_starts_over_on_an_established_session() {
        let mut r = Reconnect::new(100, 500);
        let delays: Vec<u64> = (0..5).map(|_| r.next_delay()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        r.established();
        assert_eq!(r.next_delay(), 100);
    }

    #[test]
    fn a_pause_from_the_server_wins_once_without_resetting_the_backoff() {
        let mut r = Reconnect::new(100, 5_000);
        r.next_delay();
        r.pause(0);
        assert_eq!(r.next_delay(), 0, "GoAway with reconnect_after_ms 0: at once");
        assert_eq!(r.next_delay(), 400, "the backoff went on doubling");
    }

    #[test]
    fn each_ended_connection_moves_to_the_next_address() {
        let mut r = Reconnect::new(1, 1);
        let mut order = vec![r.address(3)];
        for _ in 0..4 {
            r.next_delay();
            order.push(r.address(3));
        }
        assert_eq!(order, vec![0, 1, 2, 0, 1]);
        assert_eq!(r.address(1), 0, "one address: always it");
        assert_eq!(r.address(0), 0);
    }
}
