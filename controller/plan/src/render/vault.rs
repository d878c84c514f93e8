//! `[secure_vault]` on (docs/secure-vault.md §5): each node's document has `$secret{alias}`
//! where its secrets were and, as its last table, `[secrets]` with each of them encrypted; the
//! node gets the secret manager's configuration and, at every start, the keystore password in
//! the file the server reads and deletes.
//!
//! The encryption is the controller's ([`VaultCipher`]: it holds the vault keystore's key).
//! Rendered without one (`apimctl render`), `[secrets]` holds the plaintexts in brackets, the
//! form the product's own `ciphertool.sh -Dconfigure` encrypts in place.

use super::{MASK, NodeFile, RenderError, Sensitive};
use crate::catalogue::{layout, vault};
use crate::plan::{Issuer, Plan};

/// Encrypts one secret for the vault keystore of the cluster.
pub trait VaultCipher {
    /// The `[secrets]` value of `value`: base64 of its RSA-OAEP (SHA-1, MGF1-SHA-1) ciphertext
    /// under the vault key's certificate. The same inputs must give the same text, or every
    /// render would change every node's configuration.
    fn encrypt(&self, alias: &str, value: &str) -> Result<String, String>;
}

/// The `[secrets]` table for `used` (alias, value): the real one (encrypted, or the plaintexts
/// in brackets without a cipher) and the masked one.
pub(super) fn secrets_tables(
    node: &str,
    used: &[(String, String)],
    cipher: Option<&dyn VaultCipher>,
) -> Result<(String, String), RenderError> {
    let header = format!("\n[{}]\n", vault::SECRETS_TABLE);
    let (mut real, mut masked) = (header.clone(), header);
    for (alias, value) in used {
        let text = match cipher {
            Some(c) => c
                .encrypt(alias, value)
                .map_err(|reason| RenderError::Vault {
                    node: node.to_string(),
                    alias: alias.clone(),
                    reason,
                })?,
            None => format!("[{value}]"),
        };
        real.push_str(&format!("{alias} = {}\n", toml::Value::String(text)));
        masked.push_str(&format!("{alias} = \"{MASK}\"\n"));
    }
    Ok((real, masked))
}

/// The vault's files for a node: the secret manager's configuration naming the
/// primary keystore (the vault's key), and the password file written before every start.
pub(super) fn files(plan: &Plan, keystore_password: &str) -> Vec<NodeFile> {
    let tls = &plan.tls;
    let (file, alias) = match tls.issuer.value {
        Issuer::ClusterCa => (
            super::node::primary_keystore_file(plan).unwrap_or_else(|| tls.keystore_file.clone()),
            tls.primary_alias.clone(),
        ),
        _ => (tls.keystore_file.clone(), tls.keystore_alias.clone()),
    };
    // Relative to the carbon home, the server's working directory (the form WSO2's own
    // secure vault docs write); the node's absolute home may differ from the plan's install_dir
    // (the agent can install under a root of its own).
    let keystore = format!("{}/{file}", layout::SECURITY_DIR);
    vec![
        NodeFile {
            path: vault::SECRET_CONF_FILE.to_string(),
            content: Sensitive(vault::secret_conf(
                &keystore,
                tls.keystore_type.as_str(),
                &alias,
            )),
            secret: false,
            before_each_start: false,
        },
        NodeFile {
            path: vault::PASSWORD_FILE.to_string(),
            // Line 1: the keystore password; the key password is the same (WSO2 requires it).
            content: Sensitive(format!("{keystore_password}\n")),
            secret: true,
            before_each_start: true,
        },
    ]
}
