//! `[tls] issuer = "provided"`: the operator's keystore and truststore travel with the request,
//! are checked before anything is stored, kept sealed with the generation's secrets (never as
//! artifacts), and reach each node's spec whole, by digest.

use std::collections::HashMap;

use apim_certs::StoreFormat;
use apim_plan::secrets::{PROVIDED_PREFIX, is_provided_key};
use apim_proto::v1::{ApplyRequest, ChangeKind, PlanRequest, RolloutState};
use apim_testkit::ca::{ProvidedPair, provided_stores};
use apim_testkit::plans::{plan_v3, secrets};
use tonic::Code;

use super::{Controller, held, pack, start_agents};

const KEYSTORE: &str = "certs/apim.p12";
const TRUSTSTORE: &str = "certs/trust.p12";

/// The 3.x test plan with the operator's stores instead of the cluster CA.
fn provided_plan(sha: &str) -> String {
    plan_v3(sha, "", "halt", "30s").replace(
        "issuer = \"cluster-ca\"\n",
        &format!(
            "issuer = \"provided\"\nprovided_keystore = \"{KEYSTORE}\"\n\
             provided_truststore = \"{TRUSTSTORE}\"\n"
        ),
    )
}

/// Stores naming every node of the plan but the gateway (`gw.wso2.com`): the keystore under the
/// plans' `KS_PW`, the truststore under the shipped `wso2carbon`.
fn stores() -> ProvidedPair {
    provided_stores(
        &[
            "km.wso2.com",
            "tm.wso2.com",
            "*.pub.wso2.com",
            "pub.wso2.com",
            "dp.wso2.com",
        ],
        StoreFormat::Pkcs12,
        "wso2carbon",
        &secrets()["env:KS_PW"],
        "wso2carbon",
    )
}

fn files(p: &ProvidedPair) -> HashMap<String, Vec<u8>> {
    [
        (KEYSTORE.to_string(), p.keystore.clone()),
        (TRUSTSTORE.to_string(), p.truststore.clone()),
    ]
    .into()
}

fn apply_request(plan: &str, secrets: HashMap<String, String>, p: &ProvidedPair) -> ApplyRequest {
    ApplyRequest {
        plan_toml: plan.to_string(),
        plan_path: "plan.toml".into(),
        expected_cluster_revision: None,
        author: "test".into(),
        resolved_secrets: secrets,
        strict: false,
        provided_files: files(p),
    }
}

/// Whether any file under `dir` holds `needle`.
fn any_file_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            return any_file_holds(&path, needle);
        }
        std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provided_keystore_is_checked_kept_sealed_and_reaches_every_node_by_digest() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, _log) = start_agents(&c);
    let plan = provided_plan(&sha);
    let p = stores();
    let digest = apim_plan::digest(&p.keystore);
    let trust_digest = apim_plan::digest(&p.truststore);

    // 1. A wrong keystore password: refused at provided_keystore, nothing stored or pushed.
    let mut wrong = secrets();
    wrong.insert("env:KS_PW".into(), "not-the-ks-secret".into());
    let err = c
        .operator()
        .await
        .apply(apply_request(&plan, wrong, &p))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = apim_proto::error_details(&err).expect("details");
    assert_eq!(details.errors.len(), 1, "{details:?}");
    let e = &details.errors[0];
    let (line, col) = apim_plan::diag::line_col(&plan, plan.find("\"certs/apim.p12\"").unwrap());
    assert_eq!(
        (e.code.as_str(), e.file.as_str(), e.line, e.column),
        (
            "plan.provided_keystore",
            "plan.toml",
            line as u32,
            col as u32
        )
    );
    assert!(
        e.message
            .contains("`certs/apim.p12` does not open with keystore_password"),
        "{e:?}"
    );
    assert!(!format!("{details:?} {err:?}").contains("not-the-ks-secret"));
    assert_eq!(c.status().await.generation, 0, "nothing stored");
    assert!(c.state.desired_specs().is_empty(), "nothing pushed");
    assert!(held(&agents).values().all(|g| *g == 0));

    // 2. The right one: applied, with a warning for the gateway the certificate does not name.
    let resp = c
        .operator()
        .await
        .apply(apply_request(&plan, secrets(), &p))
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(resp.generation, 1);
    let warnings: Vec<_> = resp
        .warnings
        .iter()
        .filter(|w| w.code == "render.provided_cert_name")
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", resp.warnings);
    let w = warnings[0];
    let (line, col) = apim_plan::diag::line_col(&plan, plan.find("\"gw.wso2.com\"").unwrap());
    assert_eq!((w.line, w.column), (line as u32, col as u32), "{w:?}");
    for part in [
        "node `gw-1`",
        "does not name gw.wso2.com",
        "it names km.wso2.com, tm.wso2.com, *.pub.wso2.com",
    ] {
        assert!(w.message.contains(part), "{part}: {w:?}");
    }
    c.wait_rollout(RolloutState::Succeeded).await;

    // Every node's spec carries the files whole and their digests, nothing issued.
    let specs = c.state.desired_specs();
    assert_eq!(specs.len(), 5);
    for node in specs.values().flat_map(|s| &s.nodes) {
        let ks = node.keystores.as_ref().expect("keystores");
        let provided = ks.provided.as_ref().expect("provided");
        assert_eq!(provided.keystore, p.keystore);
        assert_eq!(provided.keystore_sha256, digest);
        assert_eq!(provided.truststore, p.truststore);
        assert_eq!(provided.truststore_sha256, trust_digest);
        assert_eq!(ks.alias, "wso2carbon");
        assert!(ks.keystore_file.ends_with("/wso2carbon.p12"), "{ks:?}");
        assert!(ks.node_key_pem.is_empty() && ks.trusted.is_empty());
        assert_eq!(ks.primary_keystore_file, None);
        let debug = format!("{node:?}");
        assert!(
            debug.contains(&digest) && !debug.contains("BEGIN"),
            "{debug}"
        );
        // The provided keystore is the primary one too.
        assert!(
            node.deployment_toml
                .contains("[keystore.primary]\nfile_name = \"wso2carbon.p12\""),
            "{}",
            node.deployment_toml
        );
    }

    // Kept with the generation's secrets, sealed; never an artifact, never in clear on disk.
    let stored = c
        .state
        .store()
        .read(|tx| tx.plan(1))
        .unwrap()
        .expect("generation 1");
    let kept: Vec<&String> = stored
        .secrets
        .keys()
        .filter(|k| is_provided_key(k))
        .collect();
    assert_eq!(
        kept,
        [
            &format!("{PROVIDED_PREFIX}{KEYSTORE}"),
            &format!("{PROVIDED_PREFIX}{TRUSTSTORE}")
        ]
    );
    let middle = &p.keystore[p.keystore.len() / 2..][..48];
    let encoded = &stored.secrets[&format!("{PROVIDED_PREFIX}{KEYSTORE}")][64..128];
    assert!(
        !any_file_holds(c.dir.path(), middle),
        "keystore bytes in clear"
    );
    assert!(
        !any_file_holds(c.dir.path(), encoded.as_bytes()),
        "keystore base64 in clear"
    );

    // 3. The same plan and files again: nothing to do.
    let before = held(&agents);
    let again = c
        .operator()
        .await
        .apply(apply_request(&plan, secrets(), &p))
        .await
        .expect("re-apply")
        .into_inner();
    assert_eq!((again.generation, again.rollout_id.as_str()), (1, ""));
    assert_eq!(held(&agents), before);

    // 4. A new keystore: `plan` shows every node restarting for it, by digest only.
    let renewed = stores();
    let resp = c
        .operator()
        .await
        .plan(PlanRequest {
            plan_toml: plan.clone(),
            plan_path: "plan.toml".into(),
            resolved_secrets: secrets(),
            strict: false,
            provided_files: files(&renewed),
        })
        .await
        .expect("plan")
        .into_inner();
    let new_digest = apim_plan::digest(&renewed.keystore);
    assert_eq!(resp.changes.len(), 5);
    for change in &resp.changes {
        assert_eq!(change.kind(), ChangeKind::Update, "{change:?}");
        assert!(change.restart, "{change:?}");
        assert!(
            change.certificate_changes.contains(&format!(
                "ship provided keystore sha256 {new_digest} to {} (was {digest})",
                change.node
            )),
            "{change:?}"
        );
        assert!(change.deployment_toml_diff.is_empty(), "{change:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secure_vault_encrypts_with_the_provided_keystores_key() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (_agents, _log) = start_agents(&c);
    let plan = format!("{}\n[secure_vault]\nenabled = true\n", provided_plan(&sha));

    // The product's cipher tool encrypts with RSA: a provided EC key is refused, nothing stored.
    let ec = stores();
    let err = c
        .operator()
        .await
        .apply(apply_request(&plan, secrets(), &ec))
        .await
        .expect_err("an EC vault key");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let details = apim_proto::error_details(&err).expect("details");
    let e = &details.errors[0];
    assert_eq!(e.code, "plan.provided_keystore", "{e:?}");
    assert!(
        e.message
            .contains("the secure vault encrypts with the key `wso2carbon`"),
        "{e:?}"
    );
    assert!(e.hint.contains("RSA"), "{e:?}");
    assert_eq!(c.status().await.generation, 0, "nothing stored");

    let rsa = apim_testkit::ca::provided_stores_with_key(
        &["km.wso2.com", "tm.wso2.com", "pub.wso2.com", "dp.wso2.com"],
        StoreFormat::Pkcs12,
        "wso2carbon",
        &secrets()["env:KS_PW"],
        "wso2carbon",
        apim_certs::generate_rsa_key().expect("rsa key"),
    );
    let resp = c
        .operator()
        .await
        .apply(apply_request(&plan, secrets(), &rsa))
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(resp.generation, 1);
    c.wait_rollout(RolloutState::Succeeded).await;
    let specs = c.state.desired_specs();
    for node in specs.values().flat_map(|s| &s.nodes) {
        let doc: toml::Table = node.deployment_toml.parse().expect("toml");
        let vault = doc["secrets"].as_table().expect("[secrets]");
        let plain = |alias: &str| {
            apim_testkit::ca::vault_decrypt(&rsa.leaf_key_der, vault[alias].as_str().unwrap())
        };
        assert_eq!(plain("admin_password"), secrets()["env:ADMIN_PW"]);
        assert_eq!(plain("keystore_password"), secrets()["env:KS_PW"]);
        assert!(!node.deployment_toml.contains(&secrets()["env:ADMIN_PW"]));
        // The secret manager opens the provided keystore with its alias.
        let conf = node
            .files
            .iter()
            .find(|f| f.path.ends_with("secret-conf.properties"))
            .expect("secret-conf.properties");
        let text = &conf.content;
        assert!(
            text.contains(
                "keystore.identity.location=repository/resources/security/wso2carbon.p12"
            ) && text.contains("keystore.identity.alias=wso2carbon")
                && text.contains("keystore.identity.type=PKCS12"),
            "{text}"
        );
    }
}
