//! libFuzzer entry point of `targets/client_session.rs` (what it checks is documented there).
#![no_main]
#[path = "../targets/client_session.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
