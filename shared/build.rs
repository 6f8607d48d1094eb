//! Generates the peer-to-peer message types from `proto/musig2/v1/p2p.proto` (and the shared
//! types it imports) with prost, parsing the .proto files in pure Rust (protox): no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = ["musig2/v1/types.proto", "musig2/v1/p2p.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
