//! Certificates for apimctl: the control-plane CA and the product PKI.
//!
//! Two separate trust domains live here:
//!
//! * **Control plane** (ECDSA P-256, rcgen on ring): [`ControlPlaneCa`] issues the
//!   controller's TLS certificate, signs agent CSRs under a fixed policy (identity from the
//!   controller, never from the CSR) and issues operator certificates. Identities are URI SANs
//!   ([`PeerIdentity`]). Agents enroll with single-use, host-bound, CA-pinning [`JoinToken`]s
//!   and renew at 2/3 of their lifetime ([`renew_at`]); a [`RevocationList`] cuts off a
//!   machine, an operator or one certificate.
//! * **Product PKI** (RSA-2048, what WSO2 itself uses): [`ClusterCa`], per-node
//!   [`NodeCert`]s (CN/SAN = hostname + LB hostnames), the shared [`PrimaryKey`], and keystore
//!   writers ([`KeystoreBuilder`] for PKCS#12, [`Keytool`] for JKS and truststore import), and
//!   [`inspect_store`] for the keystores an operator provides.
//!
//! [`tls`] holds every rustls configuration of the control plane (client with CA pinning,
//! first contact by fingerprint, server, client-certificate verifier, the local probe) and,
//! with the `channel` feature, the tonic dialer the agent and the CLI use.

mod agent;
mod control_plane;
mod error;
mod files;
mod identity;
mod inspect;
pub mod jks;
mod keypool;
mod keystore;
mod pki;
mod product;
mod revocation;
pub mod tls;
mod token;
pub mod vault;

pub use agent::AgentKey;
pub use control_plane::{
    CA_CERT_FILE, CA_KEY_FILE, CONTROL_PLANE_CA_VALIDITY, ControlPlaneCa, DEFAULT_AGENT_CERT_TTL,
    DEFAULT_OPERATOR_CERT_TTL, DEFAULT_SERVER_CERT_TTL, IssuedCert, IssuedKeyPair,
};
pub use error::{CertsError, Result};
pub use identity::{IDENTITY_URI_PREFIX, PeerCert, PeerIdentity, normalize_serial, validate_name};
pub use inspect::{KeyEntryInfo, StoreInspection, inspect_store, name_matches};
pub use keypool::{KeyPoolStats, key_pool_len, key_pool_stats, start_key_pool, wait_for_key_pool};
pub use keystore::{
    CLUSTER_CA_ALIAS, CommandRunner, ENV_STORE_PASS, GATEWAY_CERT_ALIAS, KeystoreBuilder, Keytool,
    KeytoolCommand, StoreFormat, SystemRunner, import_trusted_certs,
};
pub use pki::{cert_der_to_pem, cert_pem_to_der, renew_at, sha256_fingerprint};
pub use product::{
    CLUSTER_CA_CERT_FILE, CLUSTER_CA_KEY_FILE, CLUSTER_CA_VALIDITY, ClusterCa,
    DEFAULT_NODE_CERT_VALIDITY, DEFAULT_PRIMARY_KEY_VALIDITY, NodeCert, PRIMARY_CERT_FILE,
    PRIMARY_KEY_FILE, PrimaryKey, RSA_KEY_BITS, generate_rsa_key,
};
pub use revocation::RevocationList;
pub use token::{
    DEFAULT_TOKEN_TTL, JoinToken, ParsedToken, TOKEN_PREFIX, TokenRecord, TokenRegistry,
    verify_ca_pin,
};
