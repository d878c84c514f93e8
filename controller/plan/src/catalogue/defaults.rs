//! What the packs ship and a plan falls back to: the admin account, user store types, keystore
//! names, aliases and passwords, the CORS block of API-serving roles, gateway environments.

use super::{Product, ProductLine, Role};

/// The super admin's user name in the packs.
pub const ADMIN_USERNAME: &str = "admin";

/// The user store the packs use.
pub const USER_STORE_TYPE: &str = "database_unique_id";

/// User store types WSO2 documents.
pub const USER_STORE_TYPES: [&str; 8] = [
    "database_unique_id",
    "database",
    "read_only_ldap_unique_id",
    "read_write_ldap_unique_id",
    "active_directory_unique_id",
    "read_only_ldap",
    "read_write_ldap",
    "active_directory",
];

/// Keystore format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreType {
    /// Java KeyStore.
    Jks,
    /// PKCS#12.
    Pkcs12,
}

impl StoreType {
    /// The name WSO2's `type =` field uses.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreType::Jks => "JKS",
            StoreType::Pkcs12 => "PKCS12",
        }
    }

    /// The TLS keystore's file name unless the plan names one (the packs ship `wso2carbon.jks`).
    pub fn keystore_file(self) -> &'static str {
        match self {
            StoreType::Jks => "wso2carbon.jks",
            StoreType::Pkcs12 => "wso2carbon.p12",
        }
    }

    /// The file name of the shared primary keystore apimctl's cluster CA makes, unless the
    /// plan names one.
    pub fn primary_keystore_file(self) -> &'static str {
        match self {
            StoreType::Jks => "apimctl-primary.jks",
            StoreType::Pkcs12 => "apimctl-primary.p12",
        }
    }
}

/// The type of the keystore the packs ship (whatever bytes 4.4+ put behind its `.jks` name).
pub const SHIPPED_KEYSTORE_TYPE: StoreType = StoreType::Jks;

/// The alias of the key in the shipped keystore (and of the node key apimctl writes, by default).
pub const KEY_ALIAS: &str = "wso2carbon";

/// The password of the shipped keystore and truststore.
pub const STORE_PASSWORD: &str = "wso2carbon";

/// The truststore's file name.
pub const TRUSTSTORE_FILE: &str = "client-truststore.jks";

/// The truststore's `type` in `deployment.toml`.
pub const TRUSTSTORE_TYPE: StoreType = StoreType::Jks;

/// The alias of the shared primary key apimctl's cluster CA makes, by default.
pub const PRIMARY_ALIAS: &str = "apimctl-primary";

/// The `[apim.cors]` block the packs ship.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// `allow_origins`.
    pub allow_origins: &'static str,
    /// `allow_methods`.
    pub allow_methods: Vec<&'static str>,
    /// `allow_headers`.
    pub allow_headers: Vec<&'static str>,
    /// `allow_credentials`.
    pub allow_credentials: bool,
}

/// The CORS defaults the packs ship for API-serving roles; `None` for the other roles.
pub fn cors(product: Product, role: Role) -> Option<Cors> {
    if !matches!(
        role,
        Role::Gateway | Role::Publisher | Role::Devportal | Role::ControlPlane
    ) {
        return None;
    }
    let mut allow_headers = vec![
        "authorization",
        "Access-Control-Allow-Origin",
        "Content-Type",
        "SOAPAction",
    ];
    if product.line() != ProductLine::V3 {
        allow_headers.extend(["apikey", "Internal-Key"]);
    }
    Some(Cors {
        allow_origins: "*",
        allow_methods: vec!["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"],
        allow_headers,
        allow_credentials: false,
    })
}

/// Gateway environment types, the first being the default.
pub const GATEWAY_ENVIRONMENT_TYPES: [&str; 3] = ["hybrid", "production", "sandbox"];

/// The name of the one gateway environment the packs define.
pub fn gateway_environment_name(product: Product) -> &'static str {
    match product.line() {
        ProductLine::V3 => "Production and Sandbox",
        ProductLine::V4 | ProductLine::V45Split => "Default",
    }
}

/// The packs' description of a gateway environment of `env_type`.
pub fn gateway_environment_description(env_type: &str) -> &'static str {
    match env_type {
        "production" => "This is a gateway that handles production token traffic.",
        "sandbox" => "This is a gateway that handles sandbox token traffic.",
        _ => "This is a hybrid gateway that handles both production and sandbox token traffic.",
    }
}
