//! Where file work runs, so that chat never waits behind it: off the chat runtime, on two
//! process-wide runtimes of their own. Blob I/O (storing and reading pieces, deleting
//! files) runs on one at normal priority — it mostly waits on the disk or the network, and
//! starving it would only stall the transfer it feeds; CPU work (hashing a finished
//! upload, decoding images, thumbnails) runs on the other at nice +10 (Linux), so it only
//! gets what chat leaves over. An upload whose pieces wait stops reading its stream, and
//! QUIC flow control slows the sender (PROTOCOL.md §11.2).
//!
//! The runtimes start on first use and are never dropped (shared by every server in a
//! process, as tests run several).
use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;
use tokio::task::JoinError;

/// How much nicer the media threads are than the thread that started them (nice +10: CFS
/// weight 110 against chat's 1024).
const NICE: i32 = 10;
/// Runs the blob store's I/O (writing and reading pieces, deleting files) off the chat
/// runtime, at normal priority: it mostly waits on the disk or the network, and starving
/// it would only stall the transfer it feeds.
fn io_runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| build("natter-media-io", None))
}

/// Runs file work that only costs CPU (hashing, decoding images, thumbnails) at nice +10.
fn cpu_runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| build("natter-media-cpu", Some(lower_priority)))
}

fn build(name: &str, on_start: Option<fn()>) -> Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(1)
        .max_blocking_threads(16)
        .thread_name(name)
        .enable_all();
    if let Some(f) = on_start {
        b.on_thread_start(f);
    }
    b.build().expect("a media runtime starts")
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

/// Run blob store I/O on the media I/O runtime and wait for it; an error if it panicked.
pub async fn run<F>(fut: F) -> Result<F::Output, JoinError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    io_runtime().handle().spawn(fut).await
}

/// Run CPU work (hashing, image decoding) on the media CPU runtime's blocking threads, at
/// nice +10; an error if it panicked.
pub async fn blocking<F, T>(f: F) -> Result<T, JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    cpu_runtime().handle().spawn_blocking(f).await
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn media_threads_run_at_lower_priority() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let here = nice();
        let want = (here + super::NICE).min(19);
        assert_eq!(super::blocking(nice).await.unwrap(), want, "CPU work runs nicer");
        assert_eq!(super::run(async move { nice() }).await.unwrap(), here, "I/O does not");
    }
}
