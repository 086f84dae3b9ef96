//! Chat first: files never slow chat down (PROTOCOL.md §11.2). This module owns the measure
//! of whether chat is waiting and the byte budget that leaves to uploads.
//!
//! Two signals say chat is waiting. The chat runtime's scheduling lag comes from a probe
//! timer that wakes late when upload packets hold the core. The other is a conversation
//! commit that takes clearly longer than usual, because media writes queue on the disk
//! ahead of chat's.
//!
//! Uploads read their streams through [`ChatFirst::take`] at a rate set by a
//! delay-based controller (after LEDBAT, RFC 6817). It halves the rate at once when chat
//! waits and grows it slowly while it does not. It never drops below a floor, so every
//! upload keeps moving. A stream that is not read holds back its sender through QUIC (or
//! TCP) flow control, so a held-back upload costs neither CPU nor disk.
//!
//! May import: nothing of natter's. Conversation shards report commit times, media takes
//! from the budget, and `app.rs` runs the probe.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::time::Instant;

use tokio::time::MissedTickBehavior;

/// How often the probe checks the chat runtime and the controller moves the rate.
pub const TICK: Duration = Duration::from_millis(10);
/// The probe parks once no upload has read for this long, and wakes with the next read: an
/// idle server does not wake 100 times a second for nothing (bench/RESULTS.md, idle CPU).
const PARK_AFTER: Duration = Duration::from_secs(1);
/// Scheduling lag the chat runtime may show before uploads slow down. Tokio's timers have
/// millisecond resolution, so up to about a millisecond is noise.
const LAG_LIMIT: Duration = Duration::from_millis(2);
/// A commit is slow when it takes longer than its recent best plus this much (or twice its
/// best, if that is more).
const COMMIT_SLACK: Duration = Duration::from_millis(1);
/// How long a best commit time counts: the base is the best of this window and the one
/// before it (the disk may get slower for good; the base follows within two windows).
const BASE_WINDOW: Duration = Duration::from_secs(5);
/// The rate never drops below this (bytes/s), so uploads progress under constant chat.
pub const FLOOR: f64 = 4.0 * MIB;
/// The rate an idle server starts from, and grows back towards `ceiling` from.
const START: f64 = 32.0 * MIB;
/// Chat counts as active this long after a conversation commit. While it is not, the lag
/// the uploads cause themselves holds nobody up, and uploads may use the whole ceiling.
pub const ACTIVE: Duration = Duration::from_secs(3);
/// After a halving, the rate is not halved again for this long (one reaction per burst).
const HOLD: Duration = Duration::from_millis(100);
/// Growth per quiet tick: this fraction of the rate, plus `GROW_STEP` bytes/s.
const GROW_FRACTION: f64 = 0.01;
const GROW_STEP: f64 = 64.0 * 1024.0;
/// The most a reader may take ahead of the rate (seconds' worth), so a long pause does not
/// turn into a burst.
const BURST: f64 = 0.02;
/// The rate when nothing holds uploads back (a terabyte per second: no limit).
const UNPACED: f64 = 1e12;
/// A reader owing less than this (in time at the rate) reads on without sleeping.
const MIN_SLEEP: Duration = Duration::from_millis(2);
const MIB: f64 = 1024.0 * 1024.0;

/// What the controller saw in one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// How late the probe woke up.
    pub lag: Duration,
    /// A commit took clearly longer than the recent best.
    pub slow_commit: bool,
    /// Some upload waited for budget this tick (the rate limited someone).
    pub demand: bool,
}

/// The rate, as a pure function of the ticks it has seen (tested with made-up signals).
#[derive(Clone, Debug)]
pub struct Controller {
    rate: f64,
    ceiling: f64,
    /// FLOOR, or the ceiling if that is lower.
    floor: f64,
    held_until: Option<Instant>,
}

impl Controller {
    /// A controller whose rate never exceeds `ceiling` bytes/s.
    pub fn new(ceiling: f64) -> Self {
        // Finite, so that halving always lowers it; at least a byte a second.
        let ceiling = ceiling.clamp(1.0, UNPACED);
        let floor = FLOOR.min(ceiling);
        Controller {
            rate: START.clamp(floor, ceiling),
            ceiling,
            floor,
            held_until: None,
        }
    }

    /// Bytes per second uploads may read now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// No chat to yield to: uploads may read at the ceiling.
    pub fn chat_quiet(&mut self) {
        self.rate = self.ceiling;
        self.held_until = None;
    }

    /// Chat starts again after a quiet spell: drop at once to the start rate, rather than
    /// let the first messages find the uploads at full speed.
    pub fn chat_woke(&mut self) {
        self.rate = self.rate.min(START.max(self.floor));
    }

    /// Move the rate for one tick at `now`.
    pub fn tick(&mut self, now: Instant, s: Signals) {
        let waiting = s.lag > LAG_LIMIT || s.slow_commit;
        if waiting {
            if self.held_until.is_none_or(|t| now >= t) {
                self.rate = (self.rate / 2.0).max(self.floor);
                self.held_until = Some(now + HOLD);
            }
        } else if s.demand && self.held_until.is_none_or(|t| now >= t) {
            self.rate = (self.rate * (1.0 + GROW_FRACTION) + GROW_STEP).min(self.ceiling);
        }
    }
}

/// The best commit time of the current window and the one before it.
#[derive(Debug)]
struct Base {
    started: Instant,
    current: Option<Duration>,
    previous: Option<Duration>,
}

impl Base {
    fn observe(&mut self, now: Instant, took: Duration) -> Option<Duration> {
        if now.duration_since(self.started) >= BASE_WINDOW {
            self.previous = self.current.take();
            self.started = now;
        }
        let base = [self.current, self.previous].into_iter().flatten().min();
        self.current = Some(self.current.map_or(took, |c| c.min(took)));
        base
    }
}

/// The budget's state, a pure function of what it is told and when (tested with made-up
/// instants); [`ChatFirst`] feeds it the clock.
#[derive(Debug)]
struct State {
    settings: Settings,
    controller: Controller,
    /// Bytes that may be read without waiting; negative when readers are queued.
    tokens: f64,
    refilled: Instant,
    base: Base,
    slow_commit: bool,
    demand: bool,
    /// The last conversation commit.
    last_commit: Option<Instant>,
    /// The last read an upload paid for.
    last_take: Instant,
}

impl State {
    fn new(settings: Settings, now: Instant) -> Self {
        let mut controller = Controller::new(settings.ceiling);
        if !settings.yield_to_chat {
            controller.chat_quiet();
        }
        State {
            settings,
            controller,
            tokens: 0.0,
            refilled: now,
            base: Base {
                started: now,
                current: None,
                previous: None,
            },
            slow_commit: false,
            demand: false,
            last_commit: None,
            last_take: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let rate = self.controller.rate();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate * BURST);
        self.refilled = now;
    }

    fn chatting(&self, now: Instant) -> bool {
        self.last_commit
            .is_some_and(|t| now.saturating_duration_since(t) < ACTIVE)
    }

    /// A conversation commit that took `took` ended at `now`.
    fn commit(&mut self, now: Instant, took: Duration) {
        if self.settings.yield_to_chat && !self.chatting(now) {
            self.controller.chat_woke();
        }
        self.last_commit = Some(now);
        if let Some(base) = self.base.observe(now, took) {
            if took > (base + COMMIT_SLACK).max(base * 2) {
                self.slow_commit = true;
            }
        }
    }

    /// `n` bytes were read at `now`: how long the reader waits before reading more.
    fn charge(&mut self, now: Instant, n: usize) -> Option<Duration> {
        self.last_take = now;
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            return None;
        }
        self.demand = true;
        // Timers have millisecond resolution: a reader sleeps only once it owes more than
        // that, and then for the whole debt.
        let owed = Duration::from_secs_f64(-self.tokens / self.controller.rate());
        (owed >= MIN_SLEEP).then_some(owed)
    }

    /// The probe's tick due at `due` ran at `now`.
    fn tick(&mut self, now: Instant, due: Instant) {
        let signals = Signals {
            lag: now.saturating_duration_since(due),
            slow_commit: std::mem::take(&mut self.slow_commit),
            demand: std::mem::take(&mut self.demand),
        };
        self.refill(now);
        if !self.settings.yield_to_chat {
            return;
        }
        if self.chatting(now) {
            self.controller.tick(now, signals);
        } else {
            self.controller.chat_quiet();
        }
    }
}

/// How a server paces its uploads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Slow uploads down while chat waits (off: only `ceiling` holds them back).
    pub yield_to_chat: bool,
    /// Most bytes per second all uploads together are read at (`f64::INFINITY`: none).
    pub ceiling: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            yield_to_chat: true,
            ceiling: f64::INFINITY,
        }
    }
}

/// One server's chat-first budget: shared by its shards (which report commit times), its
/// uploads (which take from it) and its probe.
#[derive(Debug)]
pub struct ChatFirst {
    settings: Settings,
    state: Mutex<State>,
    /// The probe is ticking (else it waits for `wake`).
    probing: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl ChatFirst {
    /// A budget paced by `settings`.
    pub fn new(settings: Settings) -> Arc<Self> {
        Arc::new(ChatFirst {
            settings,
            state: Mutex::new(State::new(settings, Instant::now())),
            probing: std::sync::atomic::AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("chat-first lock")
    }

    /// A conversation commit took `took`.
    pub fn commit_took(&self, took: Duration) {
        self.state().commit(Instant::now(), took);
    }

    /// Account for `n` bytes an upload has read; waits until the rate allows more.
    pub async fn take(&self, n: usize) {
        if !self.settings.yield_to_chat && self.settings.ceiling.is_infinite() {
            return;
        }
        let wait = self.state().charge(Instant::now(), n);
        if !self.probing.load(std::sync::atomic::Ordering::Relaxed) {
            self.wake.notify_one();
        }
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }

    /// Bytes per second uploads may read now.
    pub fn rate(&self) -> f64 {
        self.state().controller.rate()
    }

    /// Probe the runtime this runs on every [`TICK`] and move the rate while uploads read,
    /// parked in between (until aborted).
    pub async fn run_probe(self: Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            self.probing.store(true, Relaxed);
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                let due = every.tick().await.into_std();
                let now = Instant::now();
                let mut state = self.state();
                state.tick(now, due);
                if now.saturating_duration_since(state.last_take) > PARK_AFTER {
                    break;
                }
            }
            self.probing.store(false, Relaxed);
            // A read between the last tick and here has left a permit: no wake is lost.
            if self.state().last_take.elapsed() <= PARK_AFTER {
                continue;
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CEILING: f64 = 1000.0 * MIB;

    fn quiet() -> Signals {
        Signals {
            demand: true,
            ..Signals::default()
        }
    }

    #[test]
    fn chat_waiting_halves_the_rate_once_per_hold_and_never_below_the_floor() {
        let mut c = Controller::new(CEILING);
        let t0 = Instant::now();
        let start = c.rate();
        let lagging = Signals {
            lag: LAG_LIMIT * 2,
            ..quiet()
        };
        c.tick(t0, lagging);
        assert_eq!(c.rate(), start / 2.0);
        c.tick(t0 + TICK, lagging);
        assert_eq!(c.rate(), start / 2.0, "one halving per hold");
        let slow = Signals {
            slow_commit: true,
            ..quiet()
        };
        c.tick(t0 + HOLD, slow);
        assert_eq!(c.rate(), start / 4.0, "a slow commit halves too");
        for i in 2..40 {
            c.tick(t0 + HOLD * i, slow);
        }
        assert_eq!(c.rate(), FLOOR);
    }

    #[test]
    fn a_quiet_chat_lets_the_rate_grow_only_while_uploads_want_more() {
        let mut c = Controller::new(CEILING);
        let t0 = Instant::now();
        let start = c.rate();
        c.tick(t0, Signals::default());
        assert_eq!(c.rate(), start, "no upload waited: nothing to grow for");
        c.tick(t0, quiet());
        assert!(c.rate() > start);
        for i in 0..2000 {
            c.tick(t0 + TICK * i, quiet());
        }
        assert_eq!(c.rate(), CEILING);
        let lag_at_limit = Signals {
            lag: LAG_LIMIT,
            ..quiet()
        };
        c.tick(t0 + TICK * 2001, lag_at_limit);
        assert_eq!(c.rate(), CEILING, "lag up to the limit is noise");
    }

    #[test]
    fn no_growth_during_the_hold_after_a_halving() {
        let mut c = Controller::new(CEILING);
        let t0 = Instant::now();
        c.tick(
            t0,
            Signals {
                slow_commit: true,
                ..quiet()
            },
        );
        let halved = c.rate();
        c.tick(t0 + TICK, quiet());
        assert_eq!(c.rate(), halved);
        c.tick(t0 + HOLD, quiet());
        assert!(c.rate() > halved);
    }

    fn state() -> (State, Instant) {
        let t0 = Instant::now();
        let settings = Settings {
            yield_to_chat: true,
            ceiling: CEILING,
        };
        (State::new(settings, t0), t0)
    }

    #[test]
    fn a_commit_is_slow_against_the_recent_best() {
        let (mut s, t0) = state();
        let slow = |s: &mut State, took_us: u64| {
            s.commit(t0, Duration::from_micros(took_us));
            std::mem::take(&mut s.slow_commit)
        };
        assert!(!slow(&mut s, 10_000), "the first commit sets the base");
        assert!(!slow(&mut s, 500), "faster than the base");
        assert!(!slow(&mut s, 1_400), "within the base plus a millisecond");
        assert!(slow(&mut s, 1_600), "over the base plus a millisecond");
    }

    #[test]
    fn readers_wait_for_the_rate_and_queue_behind_each_other() {
        let (mut s, t0) = state();
        let rate = s.controller.rate();
        let tenth = (rate / 10.0) as usize; // a tenth of a second's worth
        let waits: Vec<f64> = (0..3)
            .map(|_| s.charge(t0, tenth).map_or(0.0, |d| d.as_secs_f64()))
            .collect();
        for (i, w) in waits.iter().enumerate() {
            let want = 0.1 * (i + 1) as f64;
            assert!((w - want).abs() < 1e-6, "reader {i} waits {w} s, not {want}");
        }
        assert!(s.demand, "waiting readers are demand");
        // Once the debt is paid, reads go through up to BURST ahead of the rate, and then
        // owe a sleep only when the debt reaches MIN_SLEEP.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(s.charge(later, (rate * BURST) as usize), None);
        assert_eq!(s.charge(later, 1024), None, "owes less than MIN_SLEEP");
        let owed = s.charge(later, (rate * MIN_SLEEP.as_secs_f64()) as usize);
        assert!(owed.is_some_and(|d| d >= MIN_SLEEP), "{owed:?}");
    }

    #[test]
    fn the_probe_halves_the_rate_on_lag_only_while_chat_is_active() {
        let (mut s, t0) = state();
        let late = |due: Instant| due + LAG_LIMIT * 3;
        s.tick(late(t0), t0);
        assert_eq!(s.controller.rate(), CEILING, "no chat: the lag is the uploads' own");

        let t1 = t0 + Duration::from_secs(1);
        s.commit(t1, Duration::from_millis(1));
        assert_eq!(s.controller.rate(), START, "chat woke up");
        s.tick(late(t1), t1);
        assert_eq!(s.controller.rate(), START / 2.0);

        let t2 = t1 + ACTIVE;
        s.tick(late(t2), t2);
        assert_eq!(s.controller.rate(), CEILING, "chat quiet again: the whole ceiling");
    }

    #[test]
    fn chat_waking_up_drops_a_grown_rate_to_the_start_at_once() {
        let (mut s, t0) = state();
        for i in 0..2000 {
            s.controller.tick(t0 + TICK * i, quiet());
        }
        assert_eq!(s.controller.rate(), CEILING);
        let t1 = t0 + TICK * 2000;
        s.commit(t1, Duration::from_millis(1));
        assert_eq!(s.controller.rate(), START);
        s.commit(t1 + ACTIVE / 2, Duration::from_millis(1));
        assert_eq!(s.controller.rate(), START, "still the same chat");
    }

    #[test]
    fn without_yielding_only_the_ceiling_paces() {
        let t0 = Instant::now();
        let settings = Settings {
            yield_to_chat: false,
            ceiling: 100.0 * MIB,
        };
        let mut s = State::new(settings, t0);
        s.commit(t0, Duration::from_millis(1));
        s.tick(t0 + LAG_LIMIT * 10, t0);
        assert_eq!(s.controller.rate(), 100.0 * MIB);
    }
}
