//! What keeps the sled backend honest when its disk fails (PROTOCOL.md §6, guarantee 2).
//!
//! sled applies a batch in memory before the flush that makes it durable, and after an I/O
//! error (disk full, read-only file system) it refuses every later write — and some reads —
//! for the life of the process. Left alone, that gave a false `duplicate: true` (a retry
//! found its failed send in memory) and writes that never worked again without a restart.
//! So first, the store keeps a reserve of free space ([`SpaceGuard`]): below it every write
//! is refused with [`StoreError::Unavailable`] before it reaches sled, reads go on, and
//! writes work again as soon as there is room — sled never meets the full disk. Should a
//! write fail anyway (another process filled the disk in between, an I/O error), it takes
//! the store **down**:
//!
//! - At once, the failed database is dropped: nobody reads what may not be durable, and
//!   every request to the store is answered [`StoreError::Unavailable`] without touching
//!   sled. (Reads cannot be served either: sled's memory holds the failed writes, and
//!   opening the database again needs free space — see [`Health::recover`].)
//! - A **recovery** thread waits until the file system takes writes again (a probe file
//!   next to the database), opens the database afresh from disk — exactly what is durable —
//!   checks that sled takes a write, and brings the store **up**, without a restart. A
//!   failed write that did reach the disk is visible then, so its retry is answered
//!   `duplicate: true` from durable state. sled does not always let go of a failed
//!   database (its drop can block on a log that never becomes stable); then the store
//!   stays down — every answer typed, none false — until the server is restarted.
//!
//! Why the reserve matters more than the recovery: sled 0.34 was seen to lose acknowledged
//! writes once its log met ENOSPC — after a restart, a message acknowledged under its seq
//! was gone (`server/tests/faults.rs` without the reserve).
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::StoreError;

/// How often recovery checks whether the disk takes writes again.
const RECOVERY_POLL: Duration = Duration::from_millis(250);
/// How long reopening waits for the failed database to let go of its directory lock.
const REOPEN_WAIT: Duration = Duration::from_secs(10);
/// Bytes the recovery probe must be able to write and sync (two of sled's log segments).
const PROBE_BYTES: usize = 1 << 20;
/// What clients are told to wait before retrying a refused write.
pub(super) const RETRY_AFTER_MS: u32 = 1_000;

/// An open database.
#[derive(Debug)]
pub(super) struct Handles {
    pub db: sled::Db,
    pub tree: sled::Tree,
    /// Durable writes share flushes through it (group commit).
    pub flushes: FlushGate,
}

impl Handles {
    pub fn open(dir: &Path) -> Result<Handles, sled::Error> {
        let db = sled::Config::new().path(dir).flush_every_ms(Some(500)).open()?;
        let tree = db.open_tree("natter")?;
        Ok(Handles {
            db,
            tree,
            flushes: FlushGate::default(),
        })
    }
}

/// Group commit for durable writes: one flush runs at a time, and a flush that started
/// after a write was applied makes it durable, so writers that queue behind a running
/// flush share the next one instead of each syncing the disk. A writer takes a ticket
/// after applying its write; a flush records the last ticket taken before it started;
/// a writer whose ticket is covered when it gets its turn returns at once.
#[derive(Debug, Default)]
pub(super) struct FlushGate {
    requested: std::sync::atomic::AtomicU64,
    flushed: std::sync::atomic::AtomicU64,
    turn: tokio::sync::Mutex<()>,
}

impl FlushGate {
    /// Run `flush` unless a flush that started after this call already covered it.
    pub async fn flush<F>(&self, flush: F) -> Result<(), String>
    where
        F: std::future::Future<Output = Result<(), String>>,
    {
        use std::sync::atomic::Ordering::SeqCst;
        let ticket = self.requested.fetch_add(1, SeqCst) + 1;
        let _turn = self.turn.lock().await;
        if self.flushed.load(SeqCst) >= ticket {
            return Ok(());
        }
        let covers = self.requested.load(SeqCst);
        flush.await?;
        self.flushed.fetch_max(covers, SeqCst);
        Ok(())
    }
}

#[derive(Debug)]
enum State {
    Up(Arc<Handles>),
    /// Writes failed; the failed database is dropped and nothing is served until the
    /// disk takes writes again and the database is reopened.
    Down {
        since: Instant,
        reason: String,
    },
}

/// The free space a store keeps in reserve: writes are refused (`Unavailable`, nothing
/// touched) while the disk has less, so sled itself never meets a full disk — the etcd
/// "NOSPACE" rule. 5 % of the file system, at least 1 MiB, at most 256 MiB.
#[derive(Debug)]
pub(super) struct SpaceGuard {
    dir: PathBuf,
    reserve: u64,
}

impl SpaceGuard {
    fn new(dir: &Path, reserve: Option<u64>) -> SpaceGuard {
        let total = space(dir).map_or(0, |(_, total)| total);
        SpaceGuard {
            dir: dir.to_path_buf(),
            reserve: reserve.unwrap_or((total / 20).clamp(1 << 20, 256 << 20)),
        }
    }

    /// `Err(why)` unless a write of about `need` bytes leaves the reserve free.
    pub fn check(&self, need: u64) -> Result<(), String> {
        if self.reserve == 0 {
            return Ok(());
        }
        match space(&self.dir) {
            Some((free, _)) if free < self.reserve.saturating_add(need) => Err(format!(
                "disk nearly full: {free} bytes free, {} kept in reserve",
                self.reserve
            )),
            _ => Ok(()),
        }
    }
}

/// (available, total) bytes of the file system holding `dir`.
#[cfg(unix)]
fn space(dir: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(dir).ok()?;
    let unit = st.f_frsize.max(1);
    Some((st.f_bavail.saturating_mul(unit), st.f_blocks.saturating_mul(unit)))
}

#[cfg(not(unix))]
fn space(_dir: &Path) -> Option<(u64, u64)> {
    None
}

/// The store's health: up, or down with a recovery under way.
#[derive(Debug)]
pub(super) struct Health {
    /// Checked before every write.
    space: SpaceGuard,
    dir: PathBuf,
    /// Up, or down with one recovery thread (started by the failure that took it down)
    /// under way until it is up again.
    state: RwLock<State>,
    /// The recovery thread is opening the database right now.
    opening: AtomicBool,
}

fn unavailable(reason: &str) -> StoreError {
    StoreError::Unavailable(reason.to_string())
}

impl Health {
    pub fn open(dir: &Path, reserve: Option<u64>) -> Result<Arc<Health>, sled::Error> {
        let handles = Handles::open(dir)?;
        Ok(Arc::new(Health {
            space: SpaceGuard::new(dir, reserve),
            dir: dir.to_path_buf(),
            state: RwLock::new(State::Up(Arc::new(handles))),
            opening: AtomicBool::new(false),
        }))
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The database, or `Unavailable` while the store is down.
    pub fn writer(&self) -> Result<Arc<Handles>, StoreError> {
        match &*self.read_state() {
            State::Up(h) => Ok(h.clone()),
            State::Down { reason, .. } => Err(unavailable(reason)),
        }
    }

    /// The database for a write of about `need` bytes: also `Unavailable` (nothing
    /// touched, the store stays up) while that would eat into the free-space reserve.
    pub fn writer_for(&self, need: u64) -> Result<Arc<Handles>, StoreError> {
        let h = self.writer()?;
        self.space.check(need).map_err(StoreError::Unavailable)?;
        Ok(h)
    }

    /// What reads see: the database, or `Unavailable` while the store is down.
    pub fn view(&self) -> Result<View, StoreError> {
        self.writer().map(|h| View { h })
    }

    /// Whether the database is being reopened right now (reads wait for that, briefly).
    /// Only the recovery thread of a store that is down opens it.
    pub fn reopening(&self) -> bool {
        self.opening.load(Ordering::SeqCst)
    }

    /// A write failed: drop the database (its memory may hold what is not durable),
    /// refuse reads and writes from now on, start recovery. Returns the error for the
    /// caller.
    pub fn fail(self: &Arc<Self>, error: &dyn std::fmt::Display) -> StoreError {
        let reason = format!("storage cannot make writes durable: {error}");
        let mut state = self.write_state();
        // Only the failure that takes the store down starts its recovery; later ones (and
        // writes that were under way) find it down already.
        if let State::Up(_) = &*state {
            tracing::error!(%error, "storage failed; refusing writes until it is writable again");
            let down = State::Down {
                since: Instant::now(),
                reason: reason.clone(),
            };
            if let State::Up(failed) = std::mem::replace(&mut *state, down) {
                bury(failed);
            }
            let me = self.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("natter-sled-recovery".into())
                .spawn(move || me.recover())
            {
                tracing::error!(error = %e, "no recovery thread; restart the server to recover");
            }
        }
        unavailable(&reason)
    }

    /// Wait until the disk takes writes again, then open the database afresh from what
    /// is durable and bring the store up. Never opens on a full disk: sled writes a
    /// snapshot when it opens, and one cut short by ENOSPC leaves a database it refuses to
    /// open again.
    fn recover(&self) {
        let probe = self.dir.with_extension("probe");
        loop {
            std::thread::sleep(RECOVERY_POLL);
            if !writable(&probe) || self.space.check(0).is_err() {
                continue;
            }
            self.opening.store(true, Ordering::SeqCst);
            let reopened = reopen(&self.dir);
            self.opening.store(false, Ordering::SeqCst);
            let h = match reopened {
                Ok(h) if takes_writes(&h) => h,
                Ok(_) => continue,
                Err(e) => {
                    // sled's drop of a failed database can block for good (its log never
                    // becomes stable), and then its directory lock is never released.
                    tracing::error!(
                        error = %e,
                        "the failed storage cannot be reopened in this process; still trying — \
                         restart the server to recover (nothing was acknowledged since the failure)"
                    );
                    continue;
                }
            };
            let mut state = self.write_state();
            if let State::Down { since, .. } = &*state {
                tracing::warn!(
                    after_ms = since.elapsed().as_millis() as u64,
                    "storage is writable again; reopened from what is durable"
                );
            }
            *state = State::Up(Arc::new(h));
            return;
        }
    }
}

/// Drop a failed database on a thread of its own once nobody else holds it: sled's drop
/// flushes and joins its flusher, which can block on a failed log, and must never block a
/// runtime thread (or the recovery). Until it is gone its directory lock is held, so the
/// reopen waits for it.
fn bury(failed: Arc<Handles>) {
    let _ = std::thread::Builder::new()
        .name("natter-sled-reaper".into())
        .spawn(move || {
            while Arc::strong_count(&failed) > 1 {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(failed);
        });
}

/// Whether sled can make a write durable (a probe key, written and flushed).
fn takes_writes(h: &Handles) -> bool {
    h.tree.insert(PROBE_KEY, &[][..]).is_ok() && h.tree.remove(PROBE_KEY).is_ok() && h.tree.flush().is_ok()
}

/// The key the recovery probe writes (outside every record prefix).
const PROBE_KEY: &[u8] = b"~probe";

/// Whether `probe` can be written and synced (the disk has room and takes writes again).
fn writable(probe: &Path) -> bool {
    use std::io::Write;
    let ok = std::fs::File::create(probe)
        .and_then(|mut f| {
            f.write_all(&vec![0u8; PROBE_BYTES])?;
            f.sync_all()
        })
        .is_ok();
    let _ = std::fs::remove_file(probe);
    ok
}

/// Open the database again, waiting for the failed one to release its directory lock.
fn reopen(dir: &Path) -> Result<Handles, sled::Error> {
    let until = Instant::now() + REOPEN_WAIT;
    loop {
        match Handles::open(dir) {
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.to_string().contains("could not acquire lock") && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Reads of the tree, with sled's errors mapped.
#[derive(Debug)]
pub(super) struct View {
    h: Arc<Handles>,
}

type Entry = Result<(sled::IVec, sled::IVec), StoreError>;

/// sled's errors as the store's: an I/O error (a full or failing disk — sled returns it
/// from reads too once its log cannot be written) is `Unavailable`; the rest is `Backend`.
pub(super) fn sled_error(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(e) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

impl View {
    /// One key.
    pub fn get(&self, k: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.h.tree.get(k).map_err(sled_error)
    }

    /// Keys in `range`, ascending (or descending with `rev`).
    pub fn range<R>(&self, range: R, rev: bool) -> Box<dyn Iterator<Item = Entry> + Send>
    where
        R: RangeBounds<Vec<u8>>,
    {
        let it = self.h.tree.range(range).map(|kv| kv.map_err(sled_error));
        if rev {
            Box::new(it.rev())
        } else {
            Box::new(it)
        }
    }

    /// Keys starting with `prefix`, ascending (or descending with `rev`).
    pub fn prefix(&self, prefix: &[u8], rev: bool) -> Box<dyn Iterator<Item = Entry> + Send> {
        self.range(prefix_range(prefix), rev)
    }
}

/// The range of keys that start with `prefix`.
pub(super) fn prefix_range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = Bound::Included(prefix.to_vec());
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return (start, Bound::Excluded(end));
        }
    }
    (start, Bound::Unbounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(
            prefix_range(b"e/"),
            (Bound::Included(b"e/".to_vec()), Bound::Excluded(b"e0".to_vec()))
        );
        assert_eq!(
            prefix_range(&[1, 0xff]),
            (Bound::Included(vec![1, 0xff]), Bound::Excluded(vec![2]))
        );
        assert_eq!(prefix_range(&[0xff]), (Bound::Included(vec![0xff]), Bound::Unbounded));
    }

    /// Twenty writers flush at once: each returns only after a flush that started after
    /// its write was applied, and they share two flushes (the running one and the next).
    #[tokio::test]
    async fn writers_queued_behind_a_flush_share_the_next_and_each_is_covered() {
        use std::sync::Mutex;
        let gate = Arc::new(FlushGate::default());
        let applied = Arc::new(Mutex::new(Vec::new()));
        let flushes = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let writers: Vec<_> = (0..20)
            .map(|w| {
                let (gate, applied, flushes) = (gate.clone(), applied.clone(), flushes.clone());
                tokio::spawn(async move {
                    applied.lock().unwrap().push(w);
                    let (applied2, flushes2, gate2) = (applied.clone(), flushes.clone(), gate.clone());
                    gate.flush(async move {
                        // What a flush makes durable: every write applied before it began.
                        let durable = applied2.lock().unwrap().clone();
                        // The flush lasts until every writer has queued.
                        while gate2.requested.load(Ordering::SeqCst) < 20 {
                            tokio::task::yield_now().await;
                        }
                        flushes2.lock().unwrap().push(durable);
                        Ok(())
                    })
                    .await
                    .unwrap();
                    let done = flushes.lock().unwrap();
                    assert!(
                        done.iter().any(|d| d.contains(&w)),
                        "writer {w} returned before a flush covered it"
                    );
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(flushes.lock().unwrap().len(), 2, "queued writers share one flush");
    }

    /// A failed flush is not counted as covering anyone: the next writer flushes again.
    #[tokio::test]
    async fn a_failed_flush_covers_no_one() {
        let gate = FlushGate::default();
        assert!(gate.flush(async { Err("disk".to_string()) }).await.is_err());
        let ran = std::sync::atomic::AtomicBool::new(false);
        gate.flush(async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap();
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
