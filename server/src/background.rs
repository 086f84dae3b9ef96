//! Work that must never slow chat: CPU work that no one is waiting on from one moment to
//! the next — hashing a finished upload, decoding images, thumbnails, building the search
//! index — runs on threads at nice +10 (Linux), so it gets only what chat leaves over.
//! CFS weighs such a thread at 110 against chat's 1024: while both want the core, chat
//! gets about nine tenths of it, and a burst of background work does not show in chat's
//! latency (bench/RESULTS.md, fifth pass: a search commit beside chat every 250 ms
//! doubled the fan-out p99 at 50,000 deliveries/s).
//!
//! Nice is per thread on Linux, and a thread starts at its parent's: a library that
//! starts its own threads (tantivy's indexer, merger and compressor) runs them at nice +10
//! when it is set up through [`on_own_thread`].
//!
//! The runtime starts on first use and is never dropped (shared by every server in a
//! process, as tests run several). May import: nothing of natter's.
use std::sync::OnceLock;

use tokio::runtime::Runtime;
use tokio::task::JoinError;

/// How much nicer background threads are than the thread that started them (nice +10: CFS
/// weight 110 against chat's 1024).
const NICE: i32 = 10;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| side_runtime("natter-background", true))
}

/// A runtime beside the chat runtime: one worker and up to 16 blocking threads named
/// `name`, at nice +10 when `nicer`. For work that must not run on chat's threads.
pub fn side_runtime(name: &str, nicer: bool) -> Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(1)
        .max_blocking_threads(16)
        .thread_name(name)
        .enable_all();
    if nicer {
        b.on_thread_start(lower_priority);
    }
    b.build().expect("a side runtime starts")
}

/// Lower this thread's CPU priority by [`NICE`] (Linux: nice is per thread). Best effort:
/// where it is refused the thread keeps the default.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let now = getpriority_process(me).unwrap_or(0);
        let _ = setpriority_process(me, (now + NICE).min(19));
    }
}

/// Run CPU work on a background thread at nice +10 and wait for it; an error if it
/// panicked.
pub async fn blocking<F, T>(f: F) -> Result<T, JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    runtime().handle().spawn_blocking(f).await
}

/// Run `f` on a thread of its own at nice +10 and wait for it (blocking this thread):
/// every thread `f` starts inherits the priority. For setting up libraries that keep
/// threads of their own.
pub fn on_own_thread<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            lower_priority();
            f()
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    fn nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[tokio::test]
    async fn background_work_runs_at_lower_priority() {
        let want = (nice() + super::NICE).min(19);
        assert_eq!(super::blocking(nice).await.unwrap(), want, "CPU work runs nicer");
    }

    #[test]
    fn threads_started_from_a_background_thread_inherit_its_priority() {
        let here = nice();
        let want = (here + super::NICE).min(19);
        let (own, started) = super::on_own_thread(|| (nice(), std::thread::spawn(nice).join().unwrap()));
        assert_eq!(own, want, "the set-up thread runs nicer");
        assert_eq!(started, want, "a thread it starts does too");
        assert_eq!(nice(), here, "the caller's priority is untouched");
    }
}
