//! libFuzzer entry point of `targets/resume_tokens.rs` (what it checks is documented there).
#![no_main]
#[path = "../targets/resume_tokens.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
