//! Where file work runs: a process-wide runtime of its own whose threads run at a lower
//! CPU priority than the rest of the server (nice +10 on Linux), so bytes of files — storing and reading pieces, hashing, thumbnails —
//! only get what chat leaves over. Chat's tasks, its commits and their fsyncs stay on the
//! main runtime at normal priority; an upload whose pieces wait here stops reading its
//! stream, and QUIC flow control slows the sender down (PROTOCOL.md §11.2).
//!
//! The runtime is started on first use and never dropped (one per process, shared by every
//! server in it, as tests run several).
use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinError;

/// How much nicer the media threads are than the thread that started them (nice +10: CFS
/// weight 110 against chat's 1024).
const NICE: i32 = 10;
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(16)
            .thread_name("natter-media")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .expect("the media runtime starts")
    })
}

/// Lower this thread's CPU priority (Linux: nice is per thread). Best effort: where it
/// is refused the thread keeps the default.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let now = getpriority_process(me).unwrap_or(0);
        let _ = setpriority_process(me, (now + NICE).min(19));
    }
}

/// The media runtime, for code that spawns on it.
pub fn handle() -> &'static Handle {
    runtime().handle()
}

/// Run `fut` on the media runtime and wait for it; an error if it panicked.
pub async fn run<F>(fut: F) -> Result<F::Output, JoinError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(fut).await
}

/// Run CPU work (hashing, image decoding) on the media runtime's blocking threads; an
/// error if it panicked.
pub async fn blocking<F, T>(f: F) -> Result<T, JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    handle().spawn_blocking(f).await
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn media_threads_run_at_lower_priority() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let here = nice();
        let want = (here + super::NICE).min(19);
        assert_eq!(super::run(async move { nice() }).await.unwrap(), want);
        assert_eq!(super::blocking(nice).await.unwrap(), want);
    }
}
