//! Wall-clock time for event timestamps and last-seen values. Beside the layers: it imports
//! nothing of the crate. Logic that decides by elapsed time (presence expiry, resume windows)
//! takes `Instant`s as arguments instead, so unit tests drive it with a fake clock.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A source of time for logic that decides by it. Production uses [`SystemClock`]; unit
/// tests use [`FakeClock`] and move it by hand.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// A monotonic instant, for elapsed-time decisions.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch, for timestamps.
    fn now_ms(&self) -> u64;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A clock that moves only when told to ([`FakeClock::advance`]); clones share one time.
#[derive(Clone, Debug)]
pub struct FakeClock {
    at: Arc<Mutex<(Instant, u64)>>,
}

impl FakeClock {
    /// A fake clock at some fixed wall-clock time.
    pub fn new() -> Self {
        FakeClock {
            at: Arc::new(Mutex::new((Instant::now(), 1_700_000_000_000))),
        }
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        let mut at = self.at.lock().expect("fake clock");
        at.0 += by;
        at.1 += by.as_millis() as u64;
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::new()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.at.lock().expect("fake clock").0
    }
    fn now_ms(&self) -> u64 {
        self.at.lock().expect("fake clock").1
    }
}
