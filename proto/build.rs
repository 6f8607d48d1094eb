//! Generates the gRPC code of the signer and coordinator services from `musig2/v1/*.proto`
//! without a system protoc: protox parses the files in pure Rust and tonic-prost-build emits
//! the code. Types shared with the peer-to-peer messages come from `shared::wire::pb`.

const SHARED_TYPES: &[&str] = &[
    "SignatureFormat",
    "TaprootTweak",
    "Tweak",
    "SessionContext",
    "ElectionMethod",
    "SessionPhase",
    "TransactionType",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let files = [
        "musig2/v1/signer.proto",
        "musig2/v1/coordinator.proto",
        "musig2/v1/p2p.proto",
    ];
    for f in files.iter().chain(&["musig2/v1/types.proto"]) {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("musig2_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    // Generate the service files; the types they import are shared's (extern paths, which
    // prost does not generate again).
    let services = protox::compile(&files[..2], [root])?;
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true);
    for t in SHARED_TYPES {
        builder = builder.extern_path(
            format!(".musig2.v1.{t}"),
            format!("::shared::wire::pb::{t}"),
        );
    }
    builder.compile_fds(services)?;
    Ok(())
}
