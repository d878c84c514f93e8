//! Drift check for the checked-in generated code (the tokio-console "bootstrap" pattern).
//!
//! `src/generated/` is regenerated here from `proto/` with protox (pure Rust, no protoc) and
//! tonic-prost-build, and compared byte for byte. After editing a `.proto` file run
//! `APIM_PROTO_BLESS=1 cargo nextest run -p apim-proto drift` to rewrite the files, then review
//! and commit them with the `.proto` change.

use std::path::{Path, PathBuf};

use prost::Message as _;

/// Messages whose `Debug` is hand-written in `src/lib.rs` (secret redaction, bulky bytes).
const SKIP_DEBUG: &[&str] = &[
    ".apimctl.v1.NodeSpec",
    ".apimctl.v1.EnvVar",
    ".apimctl.v1.NodeFile",
    ".apimctl.v1.DatabaseInit",
    ".apimctl.v1.KeystoreSpec",
    ".apimctl.v1.ProvidedStores",
    ".apimctl.v1.EnrollRequest",
    ".apimctl.v1.CreateTokenResponse",
    ".apimctl.v1.ApplyRequest",
    ".apimctl.v1.PlanRequest",
    ".apimctl.v1.Chunk",
    ".apimctl.v1.UploadChunk",
    ".apimctl.v1.LogData",
    ".apimctl.v1.LogChunk",
    ".apimctl.v1.ServiceFile",
];

const GENERATED_RS: &str = "apimctl.v1.rs";
const GENERATED_FDS: &str = "apimctl.v1.fds.bin";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.proto` file of the package, relative to the include root, sorted for determinism.
fn proto_files(root: &Path) -> Vec<String> {
    let dir = root.join("apimctl/v1");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("apimctl/v1/{name}"))
        .collect();
    files.sort();
    files
}

/// Runs the code generator into `out` and returns (generated Rust, encoded descriptor set).
fn generate(out: &Path) -> (String, Vec<u8>) {
    let root = crate_dir().join("proto");
    let files = proto_files(&root);
    assert!(
        files.len() >= 5,
        "expected the apimctl.v1 .proto files, found {files:?}"
    );
    let fds = protox::compile(&files, [&root]).unwrap_or_else(|e| panic!("protox: {e:?}"));
    let fds_bytes = fds.encode_to_vec();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Without this the generated `AgentServiceClient::connect(dst)` constructor would clash
        // with the `Connect` RPC; clients build their (mTLS) `Channel` and call `new(channel)`.
        .build_transport(false)
        .skip_debug(SKIP_DEBUG.iter().copied())
        .out_dir(out)
        .compile_fds(fds)
        .expect("tonic-prost-build codegen");
    let rust = std::fs::read_to_string(out.join(GENERATED_RS)).expect("generated Rust file");
    (rust, fds_bytes)
}

#[test]
fn generated_code_matches_the_proto_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rust, fds) = generate(tmp.path());
    let dest = crate_dir().join("src/generated");
    let rs_path = dest.join(GENERATED_RS);
    let fds_path = dest.join(GENERATED_FDS);

    if std::env::var_os("APIM_PROTO_BLESS").is_some() {
        std::fs::create_dir_all(&dest).expect("create src/generated");
        std::fs::write(&rs_path, &rust).expect("write generated Rust");
        std::fs::write(&fds_path, &fds).expect("write descriptor set");
    }

    let current_rs = std::fs::read_to_string(&rs_path).unwrap_or_default();
    let current_fds = std::fs::read(&fds_path).unwrap_or_default();
    let hint =
        "run `APIM_PROTO_BLESS=1 cargo nextest run -p apim-proto drift` and commit src/generated";
    assert!(current_rs == rust, "{} is stale: {hint}", rs_path.display());
    assert!(
        current_fds == fds,
        "{} is stale: {hint}",
        fds_path.display()
    );
    // The descriptor set the library exports is the checked-in one (the library was compiled
    // before a bless run rewrote it, so only check this when not blessing).
    #[cfg(not(apim_proto_regenerate))]
    if std::env::var_os("APIM_PROTO_BLESS").is_none() {
        assert!(
            apim_proto::v1::FILE_DESCRIPTOR_SET == fds.as_slice(),
            "{hint}"
        );
    }
}
