//! Calls from the library's own threads into the app's language, made safe for the moment
//! the app's runtime ends.
//!
//! Every call that crosses from a natter thread into Kotlin, Swift or Python — a listener,
//! the token source, an upload's progress, and the wake-up that resumes an awaiting
//! coroutine — goes through [`call`]. The reason is CPython's exit: a thread that asks for
//! the GIL once the interpreter is finalizing is ended with `pthread_exit`, a forced unwind.
//! uniffi resumes a Python coroutine by calling `loop.call_soon_threadsafe` from the thread
//! that woke the future; that function queues the resumption, then releases the GIL to
//! write to the loop's socket. The loop can finish the program in that window, and the
//! waking thread, asking for the GIL back, is unwound through tokio's task harness, whose
//! `catch_unwind` takes the forced unwind and the process aborts ("FATAL: exception not
//! rethrown", SIGABRT after the program's last line). One program in thirty that awaited a
//! natter call last hit it here.
//!
//! [`call`] puts a guard around the foreign call: if the call is unwound by anything but a
//! Rust panic, the guard parks the thread for good instead of letting the unwind reach a
//! `catch_unwind`. The process is exiting anyway; its exit ends the parked thread. (CPython
//! 3.14 does the same to such threads itself.) A Rust panic passes through untouched.
//! Whatever the parked thread holds stays held, so nothing may wait on it without checking
//! [`ended`]; the one wait of that kind is a listener's `cancel`.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Run `f`, a call into the app's language, on the current (natter) thread; see the module
/// comment for what happens if the app's runtime ends the thread inside it.
pub(crate) fn call<R>(f: impl FnOnce() -> R) -> R {
    let guard = ParkIfEnded;
    let result = f();
    std::mem::forget(guard);
    result
}

/// Whether the app's runtime has ended a thread inside [`call`]: it is exiting, and whoever
/// waits for that call to return (a listener's `cancel`) must stop waiting.
pub(crate) fn ended() -> bool {
    ENDED.load(Ordering::Acquire)
}

static ENDED: AtomicBool = AtomicBool::new(false);

/// Dropped only when [`call`]'s foreign call did not return.
struct ParkIfEnded;

impl Drop for ParkIfEnded {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // a Rust panic: let it go on
        }
        // A forced unwind: the foreign runtime is ending this thread while it exits.
        ENDED.store(true, Ordering::Release);
        loop {
            std::thread::park();
        }
    }
}

/// A future whose wake-ups reach the awaiting foreign coroutine through [`call`]: wraps a
/// future polled by uniffi (e.g. a `JoinHandle` of the library's runtime).
pub(crate) struct Resumed<F>(pub(crate) F);

impl<F: Future + Unpin> Future for Resumed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let waker = Waker::from(Arc::new(ForeignWaker(cx.waker().clone())));
        Pin::new(&mut self.0).poll(&mut Context::from_waker(&waker))
    }
}

/// uniffi's waker, woken inside [`call`].
struct ForeignWaker(Waker);

impl Wake for ForeignWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        call(|| self.0.wake_by_ref());
    }
}
