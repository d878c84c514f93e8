//! One integration-test binary for apim-certs (one link instead of six).
//!
//! Real files in temp dirs, the real JDK `keytool` and the real `openssl` CLI. A missing
//! `keytool` or `openssl` fails the tests with a clear message: CI installs a JDK.

mod control_plane;
mod keystores;
mod product;
mod provided;
mod revocation;
mod support;
mod tls;
mod tokens;
