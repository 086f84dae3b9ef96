//! Where blob I/O runs, so that chat never waits behind it: off the chat runtime, on a
//! process-wide runtime of its own at normal priority (storing and reading pieces,
//! deleting files) — it mostly waits on the disk or the network, and starving it would
//! only stall the transfer it feeds. CPU work on files (hashing a finished upload,
//! decoding images, thumbnails) runs at nice +10 through [`crate::background`]. An upload
//! whose pieces wait stops reading its stream, and QUIC flow control slows the sender
//! (PROTOCOL.md §11.2).
//!
//! The runtime starts on first use and is never dropped (shared by every server in a
//! process, as tests run several).
use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;
use tokio::task::JoinError;

/// Runs the blob store's I/O (writing and reading pieces, deleting files) off the chat
/// runtime, at normal priority: it mostly waits on the disk or the network, and starving
/// it would only stall the transfer it feeds.
fn io_runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| crate::background::side_runtime("natter-media-io", false))
}

/// Run blob store I/O on the media I/O runtime and wait for it; an error if it panicked.
pub async fn run<F>(fut: F) -> Result<F::Output, JoinError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    io_runtime().handle().spawn(fut).await
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn blob_io_runs_at_normal_priority() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let here = nice();
        assert_eq!(
            super::run(async move { nice() }).await.unwrap(),
            here,
            "I/O does not run nicer"
        );
    }
}
