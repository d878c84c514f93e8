//! `apimctl` against a real controller over mTLS, with fake agents that speak the real agent
//! protocol: `plan` exit codes, `apply -o json`, `status` lines.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use apim_testkit::controller::Controller;
use apim_testkit::fake_agent::{Event, FakeAgent};
use apim_testkit::plans::{V3_MACHINES, plan_v3, tiny_pack};

/// The 3.x pack the test plans name.
fn pack() -> Vec<u8> {
    tiny_pack("wso2am-3.2.0")
}

type Log = Arc<Mutex<Vec<(String, Event)>>>;

fn start_agents(c: &Controller) -> (BTreeMap<String, FakeAgent>, Log) {
    let log: Log = Arc::default();
    let agents = V3_MACHINES
        .iter()
        .map(|m| (m.to_string(), FakeAgent::start(c, m, Arc::clone(&log))))
        .collect();
    (agents, log)
}

/// Runs the real `apimctl` binary against `c` with an operator certificate and the plan's
/// secrets in its environment; returns (exit code, stdout, stderr).
async fn apimctl(c: &Controller, dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = assert_cmd::Command::from_std(apimctl_command(c, dir, args));
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run apimctl"))
        .await
        .expect("join");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real `apimctl` binary with `args`, set up as [`apimctl`] runs it.
fn apimctl_command(c: &Controller, dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let issued = c
        .state
        .ca()
        .issue_operator_cert("cli", apim_certs::DEFAULT_OPERATOR_CERT_TTL)
        .expect("operator cert");
    std::fs::write(dir.join("op.pem"), &issued.cert.cert_pem).expect("cert");
    std::fs::write(dir.join("op-key.pem"), issued.key_pem()).expect("key");
    std::fs::write(dir.join("ca.pem"), c.ca_pem()).expect("ca");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_apimctl"));
    cmd.current_dir(dir)
        .args(args)
        .env("APIMCTL_CONTROLLER", c.addr.to_string())
        .env("APIMCTL_CA", dir.join("ca.pem"))
        .env("APIMCTL_CERT", dir.join("op.pem"))
        .env("APIMCTL_KEY", dir.join("op-key.pem"))
        .env("APIMCTL_CONFIG", dir.join("no-such-client.toml"))
        .env("APIMCTL_CACHE_DIR", dir.join("apimctl-cache"))
        .env("ADMIN_PW", "admin-secret")
        .env("DB_PW", "db-secret")
        .env("KS_PW", "ks-secret");
    cmd
}

/// The test plan's pack and driver in `dir/dist`; the pack's bytes.
/// The pack in `dir/dist` and the 3.x plan naming it in `dir/plan.toml`; returns its sha256.
fn write_plan(dir: &std::path::Path) -> String {
    let sha = apim_plan::digest(&write_dist(dir));
    std::fs::write(dir.join("plan.toml"), plan_v3(&sha, "", "halt", "30s")).expect("plan");
    sha
}

fn write_dist(dir: &std::path::Path) -> Vec<u8> {
    std::fs::create_dir_all(dir.join("dist")).expect("dist");
    let pack = pack();
    std::fs::write(dir.join("dist/wso2am-3.2.0.zip"), &pack).expect("pack");
    let driver = dir
        .join("dist")
        .join(apim_testkit::plans::MYSQL_DRIVER_FILE);
    std::fs::write(driver, apim_testkit::plans::mysql_driver_jar()).expect("driver");
    pack
}

/// Whether `text` holds an RFC 3339 time (`2026-01-05T…`).
fn has_rfc3339(text: &str) -> bool {
    text.as_bytes().windows(11).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit) && w[4] == b'-' && w[7] == b'-' && w[10] == b'T'
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_plan_exit_codes_apply_and_status_lines() {
    let c = Controller::start().await;
    let (_agents, _log) = start_agents(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    let sha = write_plan(dir.path());
    std::fs::write(dir.path().join("bad.toml"), "[cluster\n").expect("bad plan");

    // Everything is new: exit 2. A dry run: no pack uploaded, no certificate issued.
    let (code, out, err) = apimctl(&c, dir.path(), &["plan", "plan.toml"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("+ km-1 (vm-km-1): create"), "{out}");
    assert!(!out.contains("admin-secret"), "secrets are masked");
    assert!(!c.state.artifacts().path_for(&sha).expect("path").exists());
    assert!(
        !c.state.pki_dir().join("apim-test").exists(),
        "plan made the cluster's PKI"
    );

    let (code, out, err) = apimctl(&c, dir.path(), &["apply", "plan.toml", "-o", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(c.state.artifacts().path_for(&sha).expect("path").exists());
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(json["rollout"]["state"], "succeeded");

    let (code, out, err) = apimctl(&c, dir.path(), &["plan", "plan.toml"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to change"));

    let (code, _, err) = apimctl(&c, dir.path(), &["plan", "bad.toml"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("bad.toml:"), "{err}");

    let (code, out, _) = apimctl(&c, dir.path(), &["status"]).await;
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("generation 1: ")),
        "{out}"
    );
    let header: Vec<&str> = lines
        .next()
        .expect("table header")
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "MACHINE",
            "NODE",
            "PHASE",
            "GEN",
            "RESTARTS",
            "PID",
            "IN PHASE",
            "STEP / ERROR"
        ],
        "{out}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 5, "{out}");
    for r in &rows {
        assert!(r[0].starts_with("vm-"), "{out}");
        assert_eq!(r[2], "healthy", "{out}");
        assert_eq!(r[3], "1", "every node is on plan generation 1: {out}");
        assert!(r[4].parse::<u32>().is_ok(), "restarts: {out}");
    }
    assert!(!has_rfc3339(&out), "human times in the table: {out}");

    // History: the one generation, its outcome and what it changed.
    let (code, out, err) = apimctl(&c, dir.path(), &["history"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "a header and one generation: {out}");
    assert!(rows[0].starts_with("GEN  APPLIED "), "{out}");
    assert!(rows[1].starts_with("1  "), "{out}");
    assert!(
        rows[1].contains("succeeded")
            && (rows[1].contains(" ago ") || rows[1].contains(" just now "))
            && !has_rfc3339(&out),
        "a human time: {out}"
    );
    let (code, out, _) = apimctl(&c, dir.path(), &["history", "-o", "json"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    assert_eq!(json["generations"][0]["rollout"]["state"], "succeeded");
    // Nothing in flight: abort says so and exits 1.
    let (code, _, err) = apimctl(&c, dir.path(), &["rollout", "abort"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no rollout is in flight"), "{err}");
    // Nothing earlier to return to.
    let (code, _, err) = apimctl(&c, dir.path(), &["rollback"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no earlier generation rolled out successfully"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_ends_once_its_reader_is_gone() {
    use std::io::BufRead;
    use std::process::Stdio;

    let c = Controller::start().await;
    let (_agents, _log) = start_agents(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut watch = apimctl_command(&c, dir.path(), &["status", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn apimctl");
    // `apimctl status --watch | grep -m1 …`: the reader takes the first line and goes away.
    let mut first = String::new();
    std::io::BufReader::new(watch.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    // Piped: every line starts with the time of the change, and no escape sequence.
    let (stamp, line) = first.split_once(' ').expect("a stamp");
    assert!(
        stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{first}"
    );
    assert!(line.starts_with("generation "), "{first}");
    assert!(!first.contains('\u{1b}'), "{first:?}");

    // The cluster changes; the watcher has nowhere to write it and ends.
    let sha = c.store_pack(&pack());
    c.apply(&plan_v3(&sha, "", "halt", "30s"))
        .await
        .expect("apply");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = watch.try_wait().expect("wait") {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            let _ = watch.kill();
            panic!("status --watch kept running with no one reading");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_renews_its_certificate_with_the_current_one() {
    use std::os::unix::fs::PermissionsExt;
    let c = Controller::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Files as `controller operator-cert` wrote them; kept across the two runs below.
    let cmd = apimctl_command(&c, dir.path(), &["renew-cert"]);
    let before = std::fs::read_to_string(dir.path().join("op.pem")).expect("cert");
    let key_before = std::fs::read_to_string(dir.path().join("op-key.pem")).expect("key");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        cmd.output().expect("run")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("renewed the certificate of operator cli"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = std::fs::read_to_string(dir.path().join("op.pem")).expect("cert");
    let key_after = std::fs::read_to_string(dir.path().join("op-key.pem")).expect("key");
    assert_ne!(after, before);
    assert_ne!(key_after, key_before, "a fresh key");
    for f in ["op.pem", "op-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // The renewed pair works.
    let mut status = std::process::Command::new(env!("CARGO_BIN_EXE_apimctl"));
    status
        .args(["status", "-o", "json"])
        .env("APIMCTL_CONTROLLER", c.addr.to_string())
        .env("APIMCTL_CA", dir.path().join("ca.pem"))
        .env("APIMCTL_CERT", dir.path().join("op.pem"))
        .env("APIMCTL_KEY", dir.path().join("op-key.pem"))
        .env("APIMCTL_CONFIG", dir.path().join("no-such-client.toml"));
    let out = tokio::task::spawn_blocking(move || status.output().expect("run"))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[tls] issuer = "provided"`: `plan` and `apply` read the keystores beside the plan and send
/// them with the request (never as an upload); the controller's warning for the gateway the
/// certificate does not name is printed once, and every node's spec carries the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_apply_send_a_provided_keystore_with_the_request() {
    let c = Controller::start().await;
    let (_agents, _log) = start_agents(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("certs")).expect("certs");
    let pack = write_dist(dir.path());
    let stores = apim_testkit::ca::provided_stores(
        &["*.wso2.com"],
        apim_certs::StoreFormat::Pkcs12,
        "wso2carbon",
        "ks-secret",
        "wso2carbon",
    );
    std::fs::write(dir.path().join("certs/ks.p12"), &stores.keystore).expect("keystore");
    let plan = plan_v3(&apim_plan::digest(&pack), "", "halt", "30s")
        .replace(
            "issuer = \"cluster-ca\"\n",
            "issuer = \"provided\"\nprovided_keystore = \"certs/ks.p12\"\n",
        )
        .replace(
            "hostname = \"gw.wso2.com\"",
            "hostname = \"gw.example.com\"",
        );
    std::fs::write(dir.path().join("plan.toml"), &plan).expect("plan");

    let (code, out, err) = apimctl(&c, dir.path(), &["plan", "plan.toml"]).await;
    assert_eq!(code, 2, "{out}{err}");
    let warning = "warning: node `gw-1`: the provided certificate (`certs/ks.p12` alias \
                   `wso2carbon`) does not name gw.example.com; it names *.wso2.com";
    assert_eq!(err.matches(warning).count(), 1, "{err}");

    let (code, out, err) = apimctl(&c, dir.path(), &["apply", "plan.toml"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err.matches(warning).count(), 1, "{err}");
    let digest = apim_plan::digest(&stores.keystore);
    assert!(
        !c.state
            .artifacts()
            .path_for(&digest)
            .expect("path")
            .exists()
    );
    for spec in c.state.desired_specs().values() {
        let provided = spec.nodes[0]
            .keystores
            .as_ref()
            .and_then(|k| k.provided.as_ref())
            .expect("provided");
        assert_eq!(provided.keystore_sha256, digest);
        assert!(
            provided.truststore.is_empty(),
            "the pack's truststore stays"
        );
    }
}

/// `-o json`: one JSON document per command, errors included (on stdout, with the exit code
/// the text would have); `agents -o json` is one document like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_output_is_one_document_errors_included() {
    let c = Controller::start().await;
    let (_agents, _log) = start_agents(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    write_plan(dir.path());
    let one_document = |out: &str| -> serde_json::Value {
        let mut docs = serde_json::Deserializer::from_str(out).into_iter::<serde_json::Value>();
        let doc = docs.next().expect("a document").expect("valid JSON");
        assert!(docs.next().is_none(), "exactly one document: {out}");
        doc
    };

    let (code, out, err) = apimctl(&c, dir.path(), &["apply", "plan.toml", "-o", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let status = one_document(&out);
    for m in status["machines"].as_array().expect("machines") {
        for n in m["nodes"].as_array().expect("nodes") {
            assert!(n["restarts"].is_u64() && n.get("pid").is_some(), "{n}");
        }
    }
    let (code, out, _) = apimctl(
        &c,
        dir.path(),
        &["apply", "plan.toml", "--no-wait", "-o", "json"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(one_document(&out)["state"], "unchanged");

    let (code, out, err) = apimctl(&c, dir.path(), &["agents", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let agents = one_document(&out);
    let connected: Vec<&str> = agents["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter(|a| a["connected"] == true)
        .filter_map(|a| a["machine"].as_str())
        .collect();
    assert_eq!(connected.len(), V3_MACHINES.len(), "{out}");
    let (code, out, _) = apimctl(&c, dir.path(), &["agents"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("MACHINE "), "{out}");
    assert!(!has_rfc3339(&out), "human times: {out}");

    // An error: the JSON document on stdout, nothing else; the same exit code as in text.
    let (code, out, err) = apimctl(&c, dir.path(), &["rollout", "abort", "-o", "json"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let e = one_document(&out);
    assert_eq!(e["error"]["exit_code"], 1, "{e}");
    assert!(e["error"]["code"].is_string(), "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no rollout is in flight")),
        "{e}"
    );
    assert!(err.is_empty(), "{err}");
    let (code, _, err) = apimctl(&c, dir.path(), &["rollout", "abort"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: "), "{err}");
}

/// `revoke` asks first: without a terminal and without `--yes` it refuses (exit 2) and
/// revokes nothing; with `--yes` it revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_refuses_without_a_terminal_unless_yes() {
    let c = Controller::start().await;
    let (_agents, _log) = start_agents(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = apimctl(&c, dir.path(), &["revoke", "vm-km-1"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("needs confirmation") && err.contains("--yes"),
        "{err}"
    );
    let (_, out, _) = apimctl(&c, dir.path(), &["agents", "-o", "json"]).await;
    let agents: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        agents["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .all(|a| a["revoked"] == false),
        "nothing revoked: {out}"
    );
    let (code, out, err) = apimctl(&c, dir.path(), &["revoke", "vm-km-1", "--yes"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("revoked vm-km-1"), "{out}");
}

/// A controller whose certificate is not from the CA file given: exit 3, the TLS failure
/// named as such, with what listens there and the files used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_file_is_reported_as_a_tls_failure_naming_the_file() {
    let c = Controller::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let other = apim_certs::ControlPlaneCa::load_or_create(&dir.path().join("other-ca"))
        .expect("another CA");
    std::fs::write(dir.path().join("other-ca.pem"), other.cert_pem()).expect("ca");
    let mut cmd = apimctl_command(&c, dir.path(), &["status"]);
    cmd.env("APIMCTL_CA", dir.path().join("other-ca.pem"));
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: the TLS handshake with the controller at {} failed",
            c.addr
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("something listens on {}", c.addr)),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "does not verify against the CA file {}",
            dir.path().join("other-ca.pem").display()
        )),
        "{err}"
    );
    assert!(
        err.contains("op.pem") && err.contains("op-key.pem"),
        "{err}"
    );
}

/// `packs` lists the store with what uses each artifact; `packs prune` asks first (and refuses
/// without a terminal unless --yes), refuses a pack the history needs, and removes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_lists_the_store_and_prune_asks_first_and_keeps_what_the_history_needs() {
    let c = Controller::start().await;
    let (_agents, _log) = start_agents(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    let sha = write_plan(dir.path());
    let (code, out, err) = apimctl(&c, dir.path(), &["apply", "plan.toml", "-o", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let orphan = c.store_pack(b"uploaded once, never applied");

    let (code, out, err) = apimctl(&c, dir.path(), &["packs"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let row = |needle: &str| {
        out.lines()
            .find(|l| l.starts_with(&needle[..12]))
            .unwrap_or_else(|| panic!("no row for {needle}: {out}"))
            .to_string()
    };
    let p = row(&sha);
    assert!(
        p.contains(" pack ") && p.contains("wso2am-3.2.0.zip") && p.contains("current"),
        "{p}"
    );
    assert!(row(&orphan).ends_with("prunable"), "{out}");
    assert!(
        out.contains("3 artifact(s)") && out.contains("current generation 1"),
        "{out}"
    );
    let (code, out, _) = apimctl(&c, dir.path(), &["packs", "-o", "json"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    let arts = json["artifacts"].as_array().expect("artifacts");
    assert_eq!(arts.len(), 3, "{json}");
    let o = arts
        .iter()
        .find(|a| a["sha256"] == orphan.as_str())
        .expect("orphan");
    assert_eq!(
        (o["prunable"].as_bool(), o["kind"].as_str()),
        (Some(true), Some(""))
    );

    // No terminal and no --yes: nothing is removed.
    let (code, out, err) = apimctl(&c, dir.path(), &["packs", "prune"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("needs confirmation") && err.contains("--yes"),
        "{err}"
    );
    let stored = |s: &str| c.state.artifacts().path_for(s).expect("path").exists();
    assert!(stored(&orphan));
    let (code, out, _) = apimctl(&c, dir.path(), &["packs", "prune", "--dry-run"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("would remove 1 artifact(s)"), "{out}");
    assert!(stored(&orphan));
    // The current generation's pack is refused by name.
    let (code, _, err) = apimctl(&c, dir.path(), &["packs", "prune", &sha[..10], "--yes"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("still needed") && err.contains("generation 1"),
        "{err}"
    );
    assert!(stored(&sha));
    let (code, out, err) =
        apimctl(&c, dir.path(), &["packs", "prune", "--yes", "-o", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    assert_eq!(json["removed"][0]["sha256"], orphan.as_str(), "{json}");
    assert_eq!(json["removed"].as_array().map(Vec::len), Some(1));
    assert!(!stored(&orphan) && stored(&sha));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_1_on_drift_and_status_shows_what_differs() {
    let c = Controller::start().await;
    let (agents, _log) = start_agents(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    write_plan(dir.path());
    let (code, out, err) = apimctl(&c, dir.path(), &["apply", "plan.toml", "-o", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = apimctl(&c, dir.path(), &["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "no drift on 5 node(s)");

    // The fake agent of gw-1's machine finds a hand edit (it sends keys, never values).
    agents["vm-gw-1"].faults.lock().unwrap().drift.insert(
        "gw-1".into(),
        vec![apim_proto::v1::Drift {
            file: "repository/conf/deployment.toml".into(),
            problem: "changed".into(),
            changed_keys: vec!["server.offset".into()],
            added_keys: vec!["server.hand_added".into()],
            ..Default::default()
        }],
    );
    let (code, out, err) = apimctl(&c, dir.path(), &["check"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("gw-1 (vm-gw-1): drifted"), "{out}");
    assert!(
        out.contains("    repository/conf/deployment.toml: changed\n        changed: server.offset\n        added: server.hand_added\n"),
        "{out}"
    );
    assert!(out.contains("1 of 5 node(s) drifted"), "{out}");
    let (code, out, _) = apimctl(&c, dir.path(), &["check", "--node", "km-1"]).await;
    assert_eq!(code, 0, "only km-1 is checked and shown: {out}");
    assert_eq!(out.trim(), "no drift on 1 node(s)");
    let (code, out, _) = apimctl(&c, dir.path(), &["check", "-o", "json"]).await;
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(json["drifted"], serde_json::json!(["gw-1"]));
    assert_eq!(json["machines"].as_array().map(Vec::len), Some(5));

    let (code, out, _) = apimctl(&c, dir.path(), &["status"]).await;
    assert_eq!(code, 0);
    let gw = out
        .lines()
        .find(|l| l.contains(" gw-1 "))
        .expect("gw-1 line");
    assert!(gw.contains("healthy, drifted"), "{out}");
    assert!(out.contains("Drift (files that differ"), "{out}");
    assert!(out.contains("      changed: server.offset"), "{out}");
    let (_, out, _) = apimctl(&c, dir.path(), &["status", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let gw = json["machines"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["nodes"].as_array().unwrap())
        .find(|n| n["node"] == "gw-1")
        .expect("gw-1");
    assert_eq!(gw["drift"][0]["file"], "repository/conf/deployment.toml");
    assert_eq!(
        gw["drift"][0]["changed_keys"],
        serde_json::json!(["server.offset"])
    );
}

/// `--controller dead,live`: the first address refuses, the second answers and is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_list_fails_over_to_the_first_that_answers() {
    let c = Controller::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let list = format!("{dead},{}", c.addr);
    let (code, out, err) = apimctl(&c, dir.path(), &["status", "--controller", &list]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    // The list from the environment too.
    let mut cmd = apimctl_command(&c, dir.path(), &["agents", "-o", "json"]);
    cmd.env("APIMCTL_CONTROLLER", &list);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run apimctl"))
        .await
        .expect("join");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.shutdown().await.expect("clean shutdown");
}

/// `controllers` against one real controller: it is the one member, leads, answered the call
/// and runs this build's version; exit 0, no warning; `-o json` is one document saying so; a
/// `--controller dead,live` list is answered by the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_lists_the_one_leading_controller() {
    let c = Controller::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let version = env!("CARGO_PKG_VERSION");

    let (code, out, err) = apimctl(&c, dir.path(), &["controllers"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(err.is_empty(), "no warning: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one member: {out}");
    assert!(lines[0].trim_start().starts_with("ID "), "{out}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "*", "marked as the one that answered: {out}");
    assert!(row.contains(&"leader") && row.contains(&version), "{out}");
    assert!(!has_rfc3339(&out), "human times: {out}");

    let (code, out, err) = apimctl(&c, dir.path(), &["controllers", "-o", "json"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    let members = doc["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{doc}");
    let me = &members[0];
    assert_eq!(me["leader"], true, "{doc}");
    assert_eq!(me["answering"], true, "{doc}");
    assert_eq!(me["version"], version, "{doc}");
    assert_eq!(me["lag_ms"], 0, "{doc}");
    assert!(me["heartbeat"].as_str().is_some_and(has_rfc3339), "{doc}");
    assert_eq!(doc["leader"], me["id"], "{doc}");
    assert_eq!(doc["problems"], serde_json::json!([]), "{doc}");
    assert_eq!(doc["warnings"], serde_json::json!([]), "{doc}");

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let list = format!("{dead},{}", c.addr);
    let (code, out, err) = apimctl(&c, dir.path(), &["controllers", "--controller", &list]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with('*')),
        "{out}"
    );
    c.shutdown().await.expect("clean shutdown");
}
