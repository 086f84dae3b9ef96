//! `uniffi-bindgen` pinned to this crate's uniffi version: `generate --library
//! target/debug/libnatter_ffi.so --language kotlin|swift|python --out-dir ...`
//! (sdk-ffi/bindgen.sh runs it).
fn main() {
    uniffi::uniffi_bindgen_main()
}
