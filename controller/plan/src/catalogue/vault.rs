//! The product's secure vault (docs/secure-vault.md): where its configuration and the keystore
//! password go, and what `ciphertool.sh -Dconfigure` would have written.

/// The secret manager's configuration, relative to the carbon home; the packs ship none, so
/// whoever encrypts `[secrets]` writes it (§3).
pub const SECRET_CONF_FILE: &str = "repository/conf/security/secret-conf.properties";

/// The file the server reads the vault keystore's password from at start and then overwrites
/// and deletes (`DefaultSecretCallbackHandler`, §4), relative to the carbon home. Without it a
/// server started in the background has no console, no password, and every `$secret{}` is its
/// alias.
pub const PASSWORD_FILE: &str = "password-tmp";

/// The `deployment.toml` table holding the encrypted values; it must be the last table (§1).
pub const SECRETS_TABLE: &str = "secrets";

/// A reference to a vault secret, where the plaintext would be.
pub fn reference(alias: &str) -> String {
    format!("$secret{{{alias}}}")
}

/// `secret-conf.properties` for the vault keystore at `keystore` (a path relative to the carbon
/// home, the server's working directory, as WSO2's secure vault docs write it), of `store_type`
/// (`JKS`/`PKCS12`), whose key is `alias`: the keys `ciphertool.sh -Dconfigure` writes (§3),
/// escaped as `java.util.Properties` stores them.
pub fn secret_conf(keystore: &str, store_type: &str, alias: &str) -> String {
    let entries = [
        ("secVault.enabled", "true"),
        (
            "carbon.secretProvider",
            "org.wso2.securevault.secret.handler.SecretManagerSecretCallbackHandler",
        ),
        ("secretRepositories", "file"),
        (
            "secretRepositories.file.provider",
            "org.wso2.securevault.secret.repository.FileBaseSecretRepositoryProvider",
        ),
        (
            "secretRepositories.file.location",
            "repository/conf/security/cipher-text.properties",
        ),
        ("keystore.identity.location", keystore),
        ("keystore.identity.type", store_type),
        ("keystore.identity.alias", alias),
        (
            "keystore.identity.store.password",
            "identity.store.password",
        ),
        (
            "keystore.identity.store.secretProvider",
            "org.wso2.carbon.securevault.DefaultSecretCallbackHandler",
        ),
        ("keystore.identity.key.password", "identity.key.password"),
        (
            "keystore.identity.key.secretProvider",
            "org.wso2.carbon.securevault.DefaultSecretCallbackHandler",
        ),
    ];
    let mut out = String::from("# written by apimctl (as ciphertool.sh -Dconfigure would)\n");
    for (k, v) in entries {
        out.push_str(&format!("{}={}\n", escape(k), escape(v)));
    }
    out
}

/// `java.util.Properties.store` escaping of a key or value.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' | '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_conf_names_the_keystore_and_escapes_as_properties_do() {
        let text = secret_conf(
            "repository/resources/security/a=b.jks",
            "JKS",
            "apimctl-primary",
        );
        assert!(
            text.contains("\nkeystore.identity.location=repository/resources/security/a\\=b.jks\n")
        );
        assert!(text.contains("\nkeystore.identity.alias=apimctl-primary\n"));
        assert!(text.contains("\nsecVault.enabled=true\n"));
        assert_eq!(reference("admin_password"), "$secret{admin_password}");
    }
}
