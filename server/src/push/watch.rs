//! Attached devices that do not acknowledge (PROTOCOL.md §13): a device with a session here
//! gets new events on its connection, not as notifications — unless it does not acknowledge
//! them within the ack delay (a phone whose connection died without a close, a tab frozen
//! in the background). This module keeps, in memory, one entry per attached registered
//! device and conversation with events not yet acknowledged; an entry whose deadline passes
//! becomes overdue and its notification is queued like an offline device's. Nothing here is
//! durable: if this node dies, the device's connection died with it and the device syncs
//! when it reconnects. Entries exist only between a delivery and its acknowledgement (or its
//! notification), and their number is bounded. A device can acknowledge an event before
//! the decision about it is made (the connection is faster than the push worker), so recent
//! acknowledgements are remembered too, for a while ([`ACK_MEMORY_MS`]).
use std::collections::HashMap;
use std::sync::Mutex;

use natter_protocol::{ConversationId, DeviceId, UserId};

use crate::store::PushJob;

/// Most entries kept; past it, attached devices are trusted to acknowledge.
const MAX_WATCHED: usize = 65_536;
/// Acknowledgements are remembered at least this long (and at most twice as long).
pub const ACK_MEMORY_MS: u64 = 10_000;
/// Most acknowledgements remembered per generation (older ones are forgotten sooner).
const MAX_ACKS: usize = 262_144;

type Key = (UserId, DeviceId, ConversationId);

#[derive(Debug)]
struct Entry {
    /// The newest event not yet acknowledged.
    seq: u64,
    /// When it becomes overdue.
    deadline_ms: u64,
    /// The notification to queue then.
    job: PushJob,
    overdue: bool,
}

/// The unacknowledged deliveries to attached registered devices on this node.
#[derive(Debug, Default)]
pub struct Watch {
    entries: Mutex<HashMap<Key, Entry>>,
    acks: Mutex<Acks>,
    /// A deadline was added: the loop that checks them wakes if it was parked.
    pub added: tokio::sync::Notify,
}

/// Recent acknowledgements: the newest seq per device and conversation, in two
/// generations (the older is dropped when the newer is [`ACK_MEMORY_MS`] old or full).
#[derive(Debug, Default)]
struct Acks {
    current: HashMap<Key, u64>,
    previous: HashMap<Key, u64>,
    since_ms: u64,
}

impl Acks {
    fn get(&self, key: &Key) -> u64 {
        self.current
            .get(key)
            .copied()
            .max(self.previous.get(key).copied())
            .unwrap_or(0)
    }

    fn rotate(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.since_ms) >= ACK_MEMORY_MS || self.current.len() >= MAX_ACKS {
            self.previous = std::mem::take(&mut self.current);
            self.since_ms = now_ms;
        }
    }
}

/// What to do with a delivery to an attached device.
#[derive(Debug, PartialEq, Eq)]
pub enum Watched {
    /// Wait for its acknowledgement.
    Waiting,
    /// Already overdue: its notification is queued; queue this newer event too.
    Overdue,
    /// Not watched (too many entries): the device is trusted to have it.
    Full,
}

impl Watch {
    /// `job`'s event was delivered to an attached device: watch for its acknowledgement
    /// until `deadline_ms`.
    pub fn delivered(&self, job: PushJob, deadline_ms: u64) -> Watched {
        let key = (job.user, job.device, job.conversation);
        if self.acks.lock().expect("acks lock").get(&key) >= job.seq {
            return Watched::Waiting; // acknowledged before this decision
        }
        let mut entries = self.entries.lock().expect("watch lock");
        if let Some(e) = entries.get_mut(&key) {
            e.seq = e.seq.max(job.seq);
            e.job.seq = e.seq;
            return if e.overdue { Watched::Overdue } else { Watched::Waiting };
        }
        if entries.len() >= MAX_WATCHED {
            return Watched::Full;
        }
        entries.insert(
            key,
            Entry {
                seq: job.seq,
                deadline_ms,
                job,
                overdue: false,
            },
        );
        self.added.notify_one();
        Watched::Waiting
    }

    /// The device acknowledged events of `conversation` up to `seq`.
    pub fn acked(&self, user: UserId, device: DeviceId, conversation: ConversationId, seq: u64) {
        {
            let mut acks = self.acks.lock().expect("acks lock");
            if acks.current.len() >= MAX_ACKS {
                let since = acks.since_ms;
                acks.rotate(since);
            }
            let newest = acks.current.entry((user, device, conversation)).or_default();
            *newest = (*newest).max(seq);
        }
        let mut entries = self.entries.lock().expect("watch lock");
        if entries.get(&(user, device, conversation)).is_some_and(|e| e.seq <= seq) {
            entries.remove(&(user, device, conversation));
        }
    }

    /// The entries whose deadline passed by `now_ms`, marked overdue: their notifications
    /// are to be queued.
    pub fn expired(&self, now_ms: u64) -> Vec<PushJob> {
        self.acks.lock().expect("acks lock").rotate(now_ms);
        let mut entries = self.entries.lock().expect("watch lock");
        entries
            .values_mut()
            .filter(|e| !e.overdue && e.deadline_ms <= now_ms)
            .map(|e| {
                e.overdue = true;
                e.job.clone()
            })
            .collect()
    }

    /// No deadline is running (every entry is overdue or there is none): nothing to check
    /// until [`Watch::added`] says so.
    pub fn idle(&self) -> bool {
        self.entries.lock().expect("watch lock").values().all(|e| e.overdue)
    }

    /// Whether the device of `job` let its deadline pass without acknowledging.
    #[cfg(test)]
    fn overdue(&self, job: &PushJob) -> bool {
        let entries = self.entries.lock().expect("watch lock");
        entries
            .get(&(job.user, job.device, job.conversation))
            .is_some_and(|e| e.overdue)
    }

    /// A notification of `job` was sent or settled: forget what it covered.
    pub fn settled(&self, job: &PushJob) {
        let mut entries = self.entries.lock().expect("watch lock");
        let key = (job.user, job.device, job.conversation);
        if entries.get(&key).is_some_and(|e| e.seq <= job.seq) {
            entries.remove(&key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("watch lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(seq: u64) -> PushJob {
        PushJob {
            id: PushJob::id_for("r", ConversationId(7)),
            user: UserId(1),
            device: DeviceId(2),
            registration: "r".into(),
            conversation: ConversationId(7),
            seq,
            due_ms: 0,
            attempts: 0,
            withdraw: false,
            unacked: false,
        }
    }

    #[test]
    fn an_acknowledged_delivery_is_never_notified() {
        let w = Watch::default();
        assert_eq!(w.delivered(job(3), 1_000), Watched::Waiting);
        assert_eq!(w.delivered(job(4), 1_500), Watched::Waiting);
        w.acked(UserId(1), DeviceId(2), ConversationId(7), 3);
        assert_eq!(w.len(), 1, "an ack of an older event leaves the newer one watched");
        w.acked(UserId(1), DeviceId(2), ConversationId(7), 4);
        assert!(w.expired(10_000).is_empty());
        assert!(!w.overdue(&job(4)));
    }

    #[test]
    fn a_silent_device_becomes_overdue_at_its_first_deadline_once() {
        let w = Watch::default();
        w.delivered(job(3), 1_000);
        w.delivered(job(5), 9_000);
        assert!(w.expired(999).is_empty(), "not before the deadline");
        let due = w.expired(1_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].seq, 5, "about the newest event");
        assert!(w.expired(2_000).is_empty(), "queued once");
        assert!(w.overdue(&job(5)));
        assert_eq!(w.delivered(job(6), 9_000), Watched::Overdue);
        w.settled(&job(5));
        assert!(w.overdue(&job(6)), "a newer event stays overdue");
        w.settled(&job(6));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn an_acknowledgement_that_comes_before_the_decision_counts() {
        let w = Watch::default();
        w.expired(0);
        w.acked(UserId(1), DeviceId(2), ConversationId(7), 4);
        assert_eq!(w.delivered(job(4), 1_000), Watched::Waiting);
        assert_eq!(w.len(), 0, "nothing to wait for");
        assert!(w.expired(ACK_MEMORY_MS).is_empty());
        // Remembered for one more generation, then forgotten.
        assert_eq!(w.delivered(job(4), ACK_MEMORY_MS + 1_000), Watched::Waiting);
        assert_eq!(w.len(), 0);
        w.expired(2 * ACK_MEMORY_MS);
        w.delivered(job(4), 2 * ACK_MEMORY_MS + 1_000);
        assert_eq!(w.len(), 1, "an old acknowledgement no longer counts");
    }
}
