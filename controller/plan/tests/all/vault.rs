//! `[secure_vault]`: every secret of a node's document becomes `$secret{alias}`, `[secrets]`
//! comes last with each value encrypted (or bracketed for the product's cipher tool), the node
//! gets the secret manager's configuration and a start-time password file, and the plan's
//! rules refuse what the product's vault cannot hold.

use std::collections::BTreeMap;

use apim_plan::pack::PackSet;
use apim_plan::plan::Plan;
use apim_plan::render::{self, MASK, RenderError, VaultCipher};
use apim_plan::validate::{self, Options};
use apim_testkit::plans::{Fixture, expect_error, expect_error_at};

const ADMIN: &str = "admin-Pa55";
const DB: &str = "db-Pa55";
const KS: &str = "ks-Pa55";

/// The fixture with a distinct value per secret, so each alias can be told apart.
fn fixture() -> Fixture {
    let f = Fixture::new();
    for (name, value) in [("admin", ADMIN), ("db", DB), ("ks", KS)] {
        std::fs::write(f.dir.path().join("secrets").join(name), value).unwrap();
    }
    f
}

fn vault_plan(f: &Fixture) -> String {
    format!("{}\n[secure_vault]\nenabled = true\n", f.base_plan())
}

fn parse(f: &Fixture, text: &str) -> Plan {
    let path = f.dir.path().join("plan.toml");
    std::fs::write(&path, text).unwrap();
    let (plan, report) = validate::check(&path, text, &BTreeMap::new(), Options::default());
    assert!(report.diagnostics.is_empty(), "{}", report.render());
    plan.unwrap_or_else(|| panic!("{}", report.render()))
}

/// A reversible stand-in for the controller's RSA cipher: enough to see which value went
/// under which alias.
struct Tagging;

impl VaultCipher for Tagging {
    fn encrypt(&self, alias: &str, value: &str) -> Result<String, String> {
        Ok(format!(
            "ENC({alias}:{})",
            value.chars().rev().collect::<String>()
        ))
    }
}

struct Failing;

impl VaultCipher for Failing {
    fn encrypt(&self, _: &str, _: &str) -> Result<String, String> {
        Err("the key is not RSA".into())
    }
}

fn tables(doc: &str) -> Vec<&str> {
    doc.lines()
        .filter(|l| l.starts_with('[') && !l.starts_with("[["))
        .collect()
}

#[test]
fn every_secret_becomes_a_reference_and_secrets_come_last_encrypted() {
    let f = fixture();
    let plan = parse(&f, &vault_plan(&f));
    let r = render::render_with(&plan, &BTreeMap::new(), &PackSet::none(), Some(&Tagging)).unwrap();
    for node in r.nodes() {
        let doc = &node.deployment_toml;
        for secret in [ADMIN, DB, KS] {
            let plain = format!("\"{secret}\"");
            assert!(
                !doc.contains(&plain),
                "{}: {secret} in clear:\n{doc}",
                node.name
            );
        }
        let parsed: toml::Table = doc.parse().unwrap();
        assert_eq!(
            parsed["super_admin"]["password"].as_str(),
            Some("$secret{admin_password}"),
            "{}",
            node.name
        );
        assert_eq!(
            parsed["keystore"]["primary"]["password"].as_str(),
            Some("$secret{keystore_password}")
        );
        // The product reads [secrets] only as the file's last table.
        assert_eq!(
            tables(doc).last(),
            Some(&"[secrets]"),
            "{}:\n{doc}",
            node.name
        );
        let secrets = parsed["secrets"].as_table().unwrap();
        assert_eq!(
            secrets["admin_password"].as_str(),
            Some(
                format!(
                    "ENC(admin_password:{})",
                    ADMIN.chars().rev().collect::<String>()
                )
                .as_str()
            )
        );
        // Every reference has its secret, and no secret is there unreferenced.
        for (alias, _) in secrets {
            assert!(
                doc.contains(&format!("$secret{{{alias}}}")),
                "{alias} unused"
            );
        }
        let refs = doc.matches("$secret{").count();
        assert!(refs >= secrets.len(), "{}", node.name);
        // Printing masks the ciphertexts too.
        let masked: toml::Table = node.deployment_toml_masked.parse().unwrap();
        for (alias, v) in masked["secrets"].as_table().unwrap() {
            assert_eq!(v.as_str(), Some(MASK), "{alias}");
        }
    }
    // The database passwords are written where the node uses a database.
    let cp = r.nodes().find(|n| n.name == "cp-1").unwrap();
    let parsed: toml::Table = cp.deployment_toml.parse().unwrap();
    assert!(
        parsed["secrets"]
            .as_table()
            .unwrap()
            .contains_key("apim_db_password")
    );
}

#[test]
fn each_node_gets_the_secret_managers_configuration_and_a_start_time_password_file() {
    let f = fixture();
    let plan = parse(&f, &vault_plan(&f));
    let r = render::render_with(&plan, &BTreeMap::new(), &PackSet::none(), Some(&Tagging)).unwrap();
    for node in r.nodes() {
        let conf = node
            .files
            .iter()
            .find(|x| x.path == "repository/conf/security/secret-conf.properties")
            .unwrap_or_else(|| panic!("{}: {:?}", node.name, node.files));
        assert!(!conf.secret && !conf.before_each_start);
        let text = &conf.content.0;
        assert!(text.contains("secretRepositories=file"), "{text}");
        assert!(
            text.contains("keystore.identity.location=repository/resources/security/"),
            "{text}"
        );
        assert!(
            !text.contains(KS),
            "the keystore password is not in the properties"
        );
        let pw = node
            .files
            .iter()
            .find(|x| x.path == "password-tmp")
            .unwrap();
        assert!(pw.secret && pw.before_each_start);
        assert_eq!(pw.content.0, format!("{KS}\n"));
        // The password reaches the server through the file only: not argv, not JAVA_OPTS.
        let mut words = node.start.argv.clone();
        words.extend(node.jvm.java_opts.iter().cloned());
        assert!(
            !words.iter().any(|w| w.contains(KS)),
            "{}: {words:?}",
            node.name
        );
    }
}

#[test]
fn without_a_cipher_the_secrets_are_bracketed_for_the_products_cipher_tool() {
    let f = fixture();
    let plan = parse(&f, &vault_plan(&f));
    let r = render::render(&plan, &BTreeMap::new(), &PackSet::none()).unwrap();
    let gw = r.nodes().find(|n| n.name == "gw-1").unwrap();
    let parsed: toml::Table = gw.deployment_toml.parse().unwrap();
    assert_eq!(
        parsed["secrets"]["admin_password"].as_str(),
        Some(format!("[{ADMIN}]").as_str())
    );
}

#[test]
fn a_failing_cipher_names_the_node_and_alias_never_the_value() {
    let f = fixture();
    let plan = parse(&f, &vault_plan(&f));
    let err =
        render::render_with(&plan, &BTreeMap::new(), &PackSet::none(), Some(&Failing)).unwrap_err();
    assert!(matches!(err, RenderError::Vault { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("node ") && text.contains("_password"),
        "{text}"
    );
    for secret in [ADMIN, DB, KS] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[test]
fn without_the_vault_nothing_changes() {
    let f = fixture();
    let plan = parse(&f, &f.base_plan());
    let r = render::render(&plan, &BTreeMap::new(), &PackSet::none()).unwrap();
    for node in r.nodes() {
        assert!(!node.deployment_toml.contains("$secret{"));
        assert!(!node.deployment_toml.contains("[secrets]"));
        assert!(node.files.is_empty(), "{:?}", node.files);
    }
}

#[test]
fn the_vault_needs_a_key_apimctl_knows() {
    let f = fixture();
    let text = vault_plan(&f).replace("[tls]\n", "[tls]\nissuer = \"pack-default\"\n");
    let r = f.check(&text);
    let at = text.find("enabled = true").unwrap() + "enabled = ".len();
    expect_error_at(&r, &text, "the pack's own shipped keystore", at);
}

#[test]
fn a_secret_longer_than_one_rsa_block_is_refused_at_its_reference() {
    let f = fixture();
    std::fs::write(f.dir.path().join("secrets/admin"), "x".repeat(215)).unwrap();
    let text = vault_plan(&f);
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "admin password is 215 bytes: the secure vault holds at most 214",
        "\"secrets/admin\" }",
    );
    // 214 bytes fit.
    std::fs::write(f.dir.path().join("secrets/admin"), "x".repeat(214)).unwrap();
    let r = f.check(&text);
    assert!(r.diagnostics.is_empty(), "{}", r.render());
}

#[test]
fn an_override_may_not_write_the_secrets_table() {
    let f = fixture();
    let text = format!(
        "{}\n[overrides]\n\"node:gw-1\" = '''\n[secrets]\nadmin_password = \"x\"\n'''\n",
        f.base_plan()
    );
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "an override may not write `[secrets]`",
        "\"node:gw-1\"",
    );
}
