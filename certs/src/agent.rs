//! The agent's half of enrollment: its private key (made on the VM, never leaving it) and the
//! CSR it sends with the join token.

use std::fmt;
use std::path::Path;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};

use crate::error::{CertsError, Result};
use crate::files;
use crate::identity::PeerIdentity;

/// The agent's private key (ECDSA P-256). `Debug` never prints it.
pub struct AgentKey {
    key: KeyPair,
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentKey").finish_non_exhaustive()
    }
}

impl AgentKey {
    /// Makes a new key with the OS random number generator.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(CertsError::rcgen("generating agent key"))?;
        Ok(AgentKey { key })
    }

    /// Loads a key from PKCS#8 PEM text.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(pem).map_err(CertsError::rcgen("loading agent key"))?;
        Ok(AgentKey { key })
    }

    /// Loads the key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_pem(&files::read_private_file(path)?)
    }

    /// Loads the key file if present, otherwise generates a key and saves it (0600). Lets an
    /// agent that crashed mid-enrollment reuse its key instead of orphaning a signed cert.
    pub fn load_or_generate(path: &Path) -> Result<Self> {
        let exists = path
            .try_exists()
            .map_err(CertsError::io("checking existence of", path))?;
        if exists {
            return Self::load(path);
        }
        let key = Self::generate()?;
        key.save(path)?;
        Ok(key)
    }

    /// Writes the key as PKCS#8 PEM, atomically, mode 0600 (its directory is made 0700 if it
    /// does not exist yet).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = files::parent_dir(path);
        if !dir.exists() {
            files::ensure_private_dir(dir)?;
        }
        files::write_private_file(path, self.key.serialize_pem().as_bytes(), false)
    }

    /// The private key PEM. Secret: needed to build the agent's TLS client identity.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The public key as DER SubjectPublicKeyInfo, to check that a returned certificate is
    /// really for this key.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key)
    }

    /// A DER PKCS#10 request signed by this key. It names `machine` (CN and URI SAN) only as a
    /// courtesy for humans reading it: the controller ignores everything but the public key.
    pub fn csr_der(&self, machine: &str) -> Result<Vec<u8>> {
        self.csr_der_for(&PeerIdentity::agent(machine)?)
    }

    /// A DER PKCS#10 request naming `identity` (an operator renewing names itself).
    pub fn csr_der_for(&self, identity: &PeerIdentity) -> Result<Vec<u8>> {
        let name = match identity {
            PeerIdentity::Agent { machine } => machine,
            PeerIdentity::Operator { name } => name,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let uri = identity.uri();
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().map_err(|_| {
            CertsError::InvalidName {
                kind: "identity URI",
                name: uri.clone(),
                reason: "not an IA5 string",
            }
        })?)];
        let csr = params
            .serialize_request(&self.key)
            .map_err(CertsError::rcgen("building agent CSR"))?;
        Ok(csr.der().as_ref().to_vec())
    }
}
