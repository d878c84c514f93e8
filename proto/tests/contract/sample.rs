//! A `MachineSpec` with every field of every message it contains set to a non-default value.

use apim_proto::prost_types::Timestamp;
use apim_proto::v1::{
    ArtifactRef, CommandSpec, DatabaseInit, DatabaseUse, DbEngine, DesiredRun, EnvVar, HostsEntry,
    HttpProbe, KeystoreSpec, LibJar, MachineFacts, MachineSpec, ManagedService, NodeFile, NodeSpec,
    ProvidedStores, Readiness, ServerProcess, ServiceFile, ServiceProbe, SharedFolders,
    SharedMount, StoreType, SyncedFolders, TrustedCert, shared_folders,
};

/// Secret strings used in the sample; the redaction test checks none of them is printed.
pub const SECRETS: &[&str] = &[
    "db-password-s3cret",
    "keystore-pass-s3cret",
    "-----BEGIN PRIVATE KEY-----node",
    "-----BEGIN PRIVATE KEY-----primary",
    "truststore-pass-s3cret",
    "env-secret-s3cret",
    "vault-password-s3cret",
    "dbinit-password-s3cret",
    "lb-key-s3cret",
];

/// Secret bytes used in the sample (provided stores, provided files); the redaction test checks
/// that neither they nor their `Debug` as a byte list is printed.
pub const SECRET_BYTES: &[&[u8]] = &[b"keystore-bytes-s3cret", b"truststore-bytes-s3cret"];

fn command(argv: &[&str], marker: Option<&str>) -> CommandSpec {
    CommandSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        success_marker: marker.map(str::to_string),
        failure_markers: vec!["ERROR".into(), "Exception in thread".into()],
        timeout_s: 120,
    }
}

/// A gateway node with everything set (optimizer, keystores with a separate primary store).
pub fn full_node() -> NodeSpec {
    NodeSpec {
        name: "gw-1".into(),
        role: "gateway".into(),
        product: "wso2am-3.2.0".into(),
        pack: Some(ArtifactRef {
            sha256: "ab".repeat(32),
            size: 412_000_123,
            file_name: "wso2am-3.2.0.zip".into(),
            top_dir: "wso2am-3.2.0".into(),
        }),
        install_dir: "/opt/wso2/gw-1".into(),
        java_home: "/usr/lib/jvm/java-11-openjdk-amd64".into(),
        run_as_user: "wso2".into(),
        deployment_toml: "[database.apim_db]\npassword = \"db-password-s3cret\"\n".into(),
        deployment_toml_path: "repository/conf/deployment.toml".into(),
        optimizer: Some(command(
            &["bin/profileSetup.sh", "-Dprofile=gateway-worker"],
            Some("Profile setup completed"),
        )),
        start: Some(command(
            &["bin/wso2server.sh", "-Dprofile=gateway-worker", "start"],
            None,
        )),
        stop: Some(command(&["bin/wso2server.sh", "stop"], Some("stopped"))),
        env: vec![
            EnvVar {
                name: "JAVA_OPTS".into(),
                value: "-Xmx2g".into(),
                secret: false,
            },
            EnvVar {
                name: "APIM_SECRET".into(),
                value: "env-secret-s3cret".into(),
                secret: true,
            },
        ],
        readiness: Some(Readiness {
            log_file: "repository/logs/wso2carbon.log".into(),
            log_line: "WSO2 Carbon started in".into(),
            tcp_ports: vec![9443, 8243, 8280],
            http_urls: vec![HttpProbe {
                url: "https://127.0.0.1:9443/api/am/gateway/v2/server-startup-healthcheck".into(),
                expect_status: 200,
                tls_insecure: true,
                expect_body: Some("WSO2 Universal Gateway-4.5.0".into()),
            }],
            timeout_s: 300,
            address: "127.0.0.11".into(),
        }),
        keystores: Some(KeystoreSpec {
            store_type: StoreType::Pkcs12.into(),
            keystore_file: "repository/resources/security/wso2carbon.p12".into(),
            alias: "wso2carbon".into(),
            password: "keystore-pass-s3cret".into(),
            node_key_pem: "-----BEGIN PRIVATE KEY-----node".into(),
            node_chain_pem: "-----BEGIN CERTIFICATE-----node".into(),
            primary_keystore_file: Some("repository/resources/security/primary.p12".into()),
            primary_alias: Some("primary".into()),
            primary_key_pem: "-----BEGIN PRIVATE KEY-----primary".into(),
            primary_chain_pem: "-----BEGIN CERTIFICATE-----primary".into(),
            truststore_file: "repository/resources/security/client-truststore.p12".into(),
            truststore_password: "truststore-pass-s3cret".into(),
            trusted: vec![TrustedCert {
                alias: "gateway_certificate_alias".into(),
                cert_pem: "-----BEGIN CERTIFICATE-----gw".into(),
            }],
            provided: Some(ProvidedStores {
                keystore: SECRET_BYTES[0].to_vec(),
                keystore_sha256: "e1".repeat(32),
                truststore: SECRET_BYTES[1].to_vec(),
                truststore_sha256: "f1".repeat(32),
            }),
        }),
        config_digest: "cd".repeat(32),
        desired: DesiredRun::Running.into(),
        java_min: 11,
        java_max: 21,
        process: Some(ServerProcess {
            pid_file: "wso2carbon.pid".into(),
            main_class: "org.wso2.carbon.bootstrap.Bootstrap".into(),
            home_arg_prefix: "-Dcarbon.home=".into(),
            home_env: "CARBON_HOME".into(),
        }),
        memory_bytes: 2_770_000_000,
        files: vec![
            NodeFile {
                path: "repository/conf/security/secret-conf.properties".into(),
                content: "secVault.enabled=true\n".into(),
                secret: false,
                before_each_start: false,
            },
            NodeFile {
                path: "password-tmp".into(),
                content: "vault-password-s3cret\n".into(),
                secret: true,
                before_each_start: true,
            },
        ],
        libs: vec![LibJar {
            artifact: Some(ArtifactRef {
                sha256: "d1".repeat(32),
                size: 2_500_000,
                file_name: "mysql-connector-j-8.4.0.jar".into(),
                top_dir: String::new(),
            }),
            dir: "repository/components/lib".into(),
        }],
        databases: vec![DatabaseUse {
            id: "apim_db".into(),
            host: "db.example.com".into(),
            port: 3306,
            init: Some(DatabaseInit {
                engine: DbEngine::Mysql.into(),
                database: "apim_db".into(),
                username: "apim".into(),
                password: "dbinit-password-s3cret".into(),
                scripts: vec!["dbscripts/apimgt/mysql.sql".into()],
            }),
        }],
        restart_seq: 2,
        log_dir: "repository/logs".into(),
        shared: Some(SharedFolders {
            group: "gateway/Default".into(),
            how: Some(shared_folders::How::Sync(SyncedFolders {
                dirs: vec!["repository/deployment/server/synapse-configs".into()],
            })),
        }),
    }
}

/// A minimal node: no optimizer and no keystores (the pack's own are left alone).
pub fn minimal_node() -> NodeSpec {
    NodeSpec {
        name: "km-1".into(),
        role: "key-manager".into(),
        optimizer: None,
        keystores: None,
        start: Some(command(
            &["bin/wso2server.sh", "-Dprofile=api-key-manager", "start"],
            None,
        )),
        // Field coverage only: the mount form of the oneof.
        shared: Some(SharedFolders {
            group: "gateway/Default".into(),
            how: Some(shared_folders::How::Mount(SharedMount {
                dir: "repository/deployment/server".into(),
                source: "nfs.example.com:/exports/apim-gw".into(),
                fstype: "nfs".into(),
                options: "rw,hard".into(),
            })),
        }),
        ..full_node()
    }
}

/// The sample machine spec at `generation`.
pub fn machine_spec(generation: u64) -> MachineSpec {
    MachineSpec {
        machine: "vm-gw-1".into(),
        generation,
        plan_generation: 3,
        hosts_block: vec![
            HostsEntry {
                address: "10.0.0.11".into(),
                names: vec!["km.wso2.com".into()],
            },
            HostsEntry {
                address: "10.0.0.21".into(),
                names: vec!["gw.wso2.com".into(), "gw-lb.wso2.com".into()],
            },
        ],
        nodes: vec![full_node(), minimal_node()],
        // Set only to cover the field: a real destroy spec has no nodes.
        destroy: true,
        services: vec![ManagedService {
            name: "load-balancer".into(),
            files: vec![ServiceFile {
                path: "conf/tls/lb-key.pem".into(),
                content: "lb-key-s3cret".into(),
                mode: 0o600,
                secret: true,
            }],
            dirs: vec!["logs".into()],
            check_argv: vec!["/usr/sbin/nginx".into(), "-t".into()],
            start_argv: vec!["/usr/sbin/nginx".into()],
            reload_argv: vec!["/usr/sbin/nginx".into(), "-s".into(), "reload".into()],
            pid_file: "run/nginx.pid".into(),
            probes: vec![ServiceProbe {
                name: "gateway".into(),
                url: "https://gw-lb.wso2.com/".into(),
                connect: "10.0.0.9:443".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----".into(),
                expect_status: 404,
            }],
            digest: "d".repeat(64),
            root: "/opt/wso2/load-balancer".into(),
        }],
    }
}

/// Facts as an agent would report them.
pub fn facts() -> MachineFacts {
    MachineFacts {
        hostname: "vm-gw-1".into(),
        os: "Ubuntu 24.04".into(),
        kernel: "6.8.0-45-generic".into(),
        cpus: 4,
        memory_bytes: 16 << 30,
        disk_free_bytes: 100 << 30,
        java_version: "17.0.12".into(),
        java_home_found: true,
    }
}

/// A fixed timestamp (deterministic tests).
pub fn timestamp() -> Timestamp {
    Timestamp {
        seconds: 1_790_000_000,
        nanos: 123_000_000,
    }
}
