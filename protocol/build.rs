//! Generates the wire types from `spec/natter.proto` with protox (no system `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec");
    println!("cargo:rerun-if-changed={spec}/natter.proto");
    let fds = protox::compile(["natter.proto"], [spec])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
