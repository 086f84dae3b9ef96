//! Generates the wire types from `spec/natter.proto` with protox (no system `protoc`).
//! They stay wire types: what apps see (JSON for JS and the CLI, uniffi records for the
//! bindings) is `client::model`, converted from these in one place.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec");
    println!("cargo:rerun-if-changed={spec}/natter.proto");
    let fds = protox::compile(["natter.proto"], [spec])?;
    let mut config = prost_build::Config::new();
    config.compile_fds(fds)?;
    Ok(())
}
