//! Generates the wire types from `spec/natter.proto` with protox (no system `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec");
    println!("cargo:rerun-if-changed={spec}/natter.proto");
    let fds = protox::compile(["natter.proto"], [spec])?;
    let mut config = prost_build::Config::new();
    // With the `serde` feature every wire type serializes (camelCase fields, oneofs as
    // `{ "variant": {...} }`): the WASM SDK hands them to JavaScript as plain objects.
    config.type_attribute(
        ".",
        "#[cfg_attr(feature = \"serde\", derive(serde::Serialize), serde(rename_all = \"camelCase\"))]",
    );
    config.compile_fds(fds)?;
    Ok(())
}
