//! libFuzzer entry point of `targets/server_requests.rs` (what it checks is documented there).
#![no_main]
#[path = "../targets/server_requests.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
