//! libFuzzer entry point of `targets/message_decoders.rs` (what it checks is documented there).
#![no_main]
#[path = "../targets/message_decoders.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
