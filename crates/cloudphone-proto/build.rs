//! Generates the node API from `proto/` with a vendored `protoc`, so building needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let file = format!("{proto_root}/cloudphone/node/v1/node.proto");
    println!("cargo:rerun-if-changed={file}");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[file],
        &[proto_root.to_string()],
    )?;
    Ok(())
}
