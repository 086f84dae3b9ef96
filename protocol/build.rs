//! Generates the wire types from `spec/natter.proto` with protox (no system `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec");
    println!("cargo:rerun-if-changed={spec}/natter.proto");
    let fds = protox::compile(["natter.proto"], [spec])?;
    let mut config = prost_build::Config::new();
    // With the `serde` feature every wire type serializes and deserializes (camelCase
    // fields, oneofs as `{ "variant": {...} }`, missing fields as their defaults): the WASM
    // SDK hands them to JavaScript as plain objects and takes them back (the timeline).
    config.type_attribute(
        ".",
        "#[cfg_attr(feature = \"serde\", derive(serde::Serialize, serde::Deserialize), serde(rename_all = \"camelCase\"))]",
    );
    config.message_attribute(".", "#[cfg_attr(feature = \"serde\", serde(default))]");
    config.compile_fds(fds)?;
    Ok(())
}
