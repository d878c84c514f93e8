//! The apimctl gRPC contract (`apimctl.v1`) between the controller, its agents and the operator
//! CLI.
//!
//! The `.proto` files live in `proto/proto/apimctl/v1/`; [`v1`] holds the prost messages and the
//! tonic clients and servers generated from them:
//!
//! | service | served by | called by | auth |
//! | --- | --- | --- | --- |
//! | [`v1::enrollment_server::Enrollment`] | controller | agent | `Enroll`: join token, no client cert; `Renew`: mTLS |
//! | [`v1::agent_service_server::AgentService`] | controller | agent | mTLS (agent cert) |
//! | [`v1::artifact_service_server::ArtifactService`] | controller | agent (`Fetch`, `Stat`), operator (`Upload`) | mTLS |
//! | [`v1::operator_service_server::OperatorService`] | controller | `apimctl` CLI | mTLS (operator cert) |
//!
//! Clients are built over a `tonic::transport::Channel` the caller configures (TLS, timeouts)
//! with `new(channel)`; the `connect(dst)` shortcut is not generated because it would clash with
//! the `AgentService.Connect` RPC.
//!
//! # Generated code
//!
//! The generated code is checked in (`src/generated/`), so dependents never run protoc, protox
//! or prost-build, and it can be read and reviewed like any other source. `tests/contract/drift.rs`
//! regenerates it with protox (pure Rust) and tonic-prost-build and fails when it differs. After
//! editing a `.proto` file:
//!
//! ```text
//! APIM_PROTO_BLESS=1 cargo nextest run -p apim-proto drift
//! ```
//!
//! If the crate no longer compiles (e.g. a field used by the hand-written `Debug` impls was
//! renamed), bless with `RUSTFLAGS="--cfg apim_proto_regenerate"` added: that cfg compiles the
//! crate empty so the generator can run.
//!
//! # Secrets
//!
//! Messages that carry secrets (deployment.toml, keystore passwords and keys, secret environment
//! variables, join tokens, resolved plan secrets) have hand-written `Debug` impls that redact them,
//! so `tracing::debug!(?msg)` is safe. Bulky byte payloads (`Chunk`, `UploadChunk`) print their
//! length only.
//!
//! # Errors
//!
//! Servers map their one error type to `tonic::Status` themselves; when the caller can act on
//! the cause they attach a [`v1::ErrorDetails`] with [`status_with_details`], and clients read it
//! back with [`error_details`].
#![allow(unexpected_cfgs)] // only for `apim_proto_regenerate`, see "Generated code" above
#![cfg(not(apim_proto_regenerate))]

/// The `apimctl.v1` package: messages, enums, and the tonic clients (`*_client`) and servers
/// (`*_server`) of every service.
pub mod v1 {
    include!("generated/apimctl.v1.rs");

    /// The encoded `google.protobuf.FileDescriptorSet` of `apimctl.v1` (with its imports and
    /// source comments), e.g. for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/apimctl.v1.fds.bin");
}

mod redact;
pub mod shared_paths;
pub mod text;

/// Re-exported so dependents can encode/decode messages without their own prost dependency.
pub use prost;
/// Re-exported for `prost_types::Timestamp` (convertible from and to `std::time::SystemTime`).
pub use prost_types;

use prost::Message as _;

/// Builds a `tonic::Status` that carries `details`, prost-encoded, in its details field (the
/// package's error-detail convention; see `ErrorDetails` in `common.proto`).
pub fn status_with_details(
    code: tonic::Code,
    message: impl Into<String>,
    details: &v1::ErrorDetails,
) -> tonic::Status {
    tonic::Status::with_details(
        code,
        message,
        tonic::codegen::Bytes::from(details.encode_to_vec()),
    )
}

/// Reads the [`v1::ErrorDetails`] a server attached with [`status_with_details`]; `None` when
/// the status carries no details or details of another kind.
pub fn error_details(status: &tonic::Status) -> Option<v1::ErrorDetails> {
    let raw = status.details();
    if raw.is_empty() {
        return None;
    }
    v1::ErrorDetails::decode(raw).ok()
}
