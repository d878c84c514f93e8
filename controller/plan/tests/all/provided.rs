//! `provided::load` and `provided::name_findings`: the operator's keystore read from the plan's
//! folder or from what the CLI sent, refused with a reason at its place in the plan, and the
//! names each node (and its load balancer) needs compared with its certificate's.

use std::collections::BTreeMap;
use std::path::Path;

use apim_certs::StoreFormat;
use apim_certs::jks::JksStore;
use apim_plan::diag::line_col;
use apim_plan::provided::{self, KEYSTORE_CODE, NAME_CODE, TRUSTSTORE_CODE};
use apim_plan::secrets::{ResolvedSecrets, insert_provided};
use apim_plan::validate::{self, Options};
use apim_testkit::ca::provided_stores;
use apim_testkit::plans::Fixture;

/// The fixture's 4.5 plan with provided stores and `extra` appended.
fn plan_text(f: &Fixture, extra: &str) -> String {
    let text = f.base_plan().replace(
        "[tls]\n",
        "[tls]\nissuer = \"provided\"\nprovided_keystore = \"certs/ks.jks\"\n\
         provided_truststore = \"certs/trust.jks\"\n",
    );
    format!("{text}{extra}")
}

fn write(f: &Fixture, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(f.dir.path().join("certs")).unwrap();
    std::fs::write(f.dir.path().join("certs").join(name), bytes).unwrap();
}

fn valid(f: &Fixture, text: &str) -> apim_plan::plan::Plan {
    let path = f.dir.path().join("plan.toml");
    let (plan, report) = validate::check(&path, text, &BTreeMap::new(), Options::default());
    plan.unwrap_or_else(|| panic!("{}", report.render()))
}

#[test]
fn a_provided_certificate_must_name_each_node_and_its_load_balancer() {
    let f = Fixture::new();
    let stores = provided_stores(
        &["*.example.com"],
        StoreFormat::Jks,
        "wso2carbon",
        "s3cret",
        "wso2carbon",
    );
    write(&f, "ks.jks", &stores.keystore);
    write(&f, "trust.jks", &stores.truststore);
    let text = plan_text(&f, "\n[load_balancers]\ngateway = \"gw.lb.example.net\"\n");
    let plan = valid(&f, &text);

    let loaded = provided::load(&plan, &BTreeMap::new())
        .unwrap()
        .expect("provided");
    assert_eq!(loaded.keystore.bytes, stores.keystore);
    assert_eq!(loaded.keystore.sha256, apim_plan::digest(&stores.keystore));
    assert_eq!(loaded.key.names, ["*.example.com"]);
    let debug = format!("{loaded:?}");
    assert!(debug.contains("<redacted") && debug.contains(&loaded.keystore.sha256));

    // cp-1 and tm-1 are covered by the wildcard; the gateway's load balancer is not.
    let findings = provided::name_findings(&plan, &loaded);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let w = &findings[0];
    assert_eq!(w.code, NAME_CODE);
    assert_eq!(
        w.diagnostic.message,
        "node `gw-1`: the provided certificate (`certs/ks.jks` alias `wso2carbon`) does not \
         name gw.lb.example.net; it names *.example.com"
    );
    assert_eq!(
        line_col(&text, w.diagnostic.span.start),
        line_col(&text, text.find("\"gw.example.com\"").unwrap())
    );

    // On the controller the same files come from what the CLI sent, not from its disk.
    let mut sent = BTreeMap::new();
    for file in loaded.files() {
        insert_provided(&mut sent, &file.written, &file.bytes);
    }
    sent.insert("file:secrets/ks".into(), "s3cret".into());
    let mut elsewhere = plan.clone();
    elsewhere.base_dir = Path::new("/nonexistent").to_path_buf();
    let again = provided::load(&elsewhere, &ResolvedSecrets(sent))
        .unwrap()
        .expect("provided");
    assert_eq!(again, loaded);
}

#[test]
fn each_refused_store_is_an_error_at_its_line_and_both_are_reported() {
    let f = Fixture::new();
    // A keystore whose key is under another password, and a truststore under another one.
    let stores = provided_stores(
        &["*.example.com"],
        StoreFormat::Jks,
        "wso2carbon",
        "s3cret",
        "not-wso2carbon",
    );
    let mut jks = JksStore::new();
    let (key, chain) = JksStore::parse(&stores.keystore, "s3cret")
        .unwrap()
        .private_key("wso2carbon", "s3cret")
        .unwrap();
    jks.set_private_key("wso2carbon", &key, &chain, "key-pass-differs")
        .unwrap();
    write(&f, "ks.jks", &jks.encode("s3cret").unwrap());
    write(&f, "trust.jks", &stores.truststore);
    let text = plan_text(&f, "");
    let plan = valid(&f, &text);

    let errors = provided::load(&plan, &BTreeMap::new()).unwrap_err();
    let got: Vec<(&str, (usize, usize), &str)> = errors
        .iter()
        .map(|e| {
            (
                e.code,
                line_col(&text, e.diagnostic.span.start),
                e.diagnostic.message.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                KEYSTORE_CODE,
                line_col(&text, text.find("\"certs/ks.jks\"").unwrap()),
                "`certs/ks.jks`: the key of alias \"wso2carbon\" does not decrypt with \
                 keystore_password"
            ),
            (
                TRUSTSTORE_CODE,
                line_col(&text, text.find("\"certs/trust.jks\"").unwrap()),
                "`certs/trust.jks` does not open with truststore_password: keystore was tampered \
                 with, or its password is incorrect"
            ),
        ]
    );
    assert!(
        errors[0]
            .diagnostic
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("key password to equal the store password"))
    );

    // A missing alias names what the store has.
    write(&f, "ks.jks", &stores.keystore);
    write(
        &f,
        "trust.jks",
        &provided_stores(&["x"], StoreFormat::Jks, "a", "s3cret", "wso2carbon").truststore,
    );
    let text = text.replace("[tls]\n", "[tls]\nkeystore_alias = \"apim\"\n");
    let errors = provided::load(&valid(&f, &text), &BTreeMap::new()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].diagnostic.message,
        "`certs/ks.jks`: no entry with alias \"apim\" (the store has entries wso2carbon)"
    );
}
