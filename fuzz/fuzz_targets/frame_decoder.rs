//! libFuzzer entry point of `targets/frame_decoder.rs` (what it checks is documented there).
#![no_main]
#[path = "../targets/frame_decoder.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
