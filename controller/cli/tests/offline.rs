//! The `apimctl` binary: exit codes, what it prints, and the files `render --out` writes.

use std::os::unix::fs::PermissionsExt;

use assert_cmd::Command;
use predicates::prelude::*;

use apim_testkit::plans::{Fixture, examples_dir};

fn apimctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_apimctl"))
}

#[test]
fn validate_accepts_a_good_plan() {
    let f = Fixture::new();
    let path = f.dir.path().join("plan.toml");
    std::fs::write(&path, f.base_plan()).unwrap();
    apimctl()
        .args(["validate", path.to_str().unwrap()])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "ok (t wso2am-4.5.0, 2 machines, 3 nodes)",
        ))
        .stderr(predicate::str::is_empty());
}

#[test]
fn validate_reports_every_error_with_location_and_exits_1() {
    let f = Fixture::new();
    let text = f
        .base_plan()
        .replacen("machine = \"vm-2\"", "machine = \"vm-9\"", 1)
        .replacen("role = \"gateway\"", "role = \"gateway\"\nofset = 2", 1);
    let path = f.dir.path().join("plan.toml");
    std::fs::write(&path, &text).unwrap();
    let out = apimctl()
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let p = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{p}:57:11: error: node `gw-1` is on unknown machine `vm-9`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{p}:59:1: error: unknown field `ofset` in [[nodes]] #3"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("= hint: did you mean `offset`?"),
        "{stderr}"
    );
    assert!(
        stderr.contains("57 | machine = \"vm-9\"\n   |           ^^^^^^"),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s), 0 warning(s)"), "{stderr}");
}

#[test]
fn validate_of_a_missing_file_names_it() {
    apimctl()
        .args(["validate", "/nonexistent/plan.toml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "error: /nonexistent/plan.toml: No such file",
        ));
}

#[test]
fn render_masks_secrets_unless_asked() {
    let plan = examples_dir().join("v3-single.toml");
    let masked = apimctl()
        .args([
            "render",
            "--skip-pack-check",
            plan.to_str().unwrap(),
            "--node",
            "tm-1",
        ])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let masked = String::from_utf8(masked).unwrap();
    assert!(
        masked.contains(
            "# ==== node tm-1 (traffic-manager) on machine apim-host, tm.wso2.com offset 3 ===="
        ),
        "{masked}"
    );
    assert!(
        masked.contains("# start:     bin/wso2server.sh -Dprofile=traffic-manager start"),
        "{masked}"
    );
    assert!(masked.contains("password = \"********\""));
    assert!(!masked.contains("password = \"root\""));
    assert!(!masked.contains("node km-1"), "--node shows one node");
    assert!(
        masked
            .contains("tier 1: km-1\ntier 2: tm-1\ntier 3: publisher-1, devportal-1, gateway-1\n"),
        "{masked}"
    );
    apimctl()
        .args([
            "render",
            "--skip-pack-check",
            "--show-secrets",
            plan.to_str().unwrap(),
            "--node",
            "tm-1",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("password = \"root\""));
}

#[test]
fn render_out_writes_a_folder_per_node_and_a_hosts_file_per_machine() {
    let out = tempfile::tempdir().unwrap();
    let plan = examples_dir().join("v45-single.toml");
    apimctl()
        .args([
            "render",
            "--skip-pack-check",
            plan.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
        ])
        .assert()
        .code(0);
    for node in ["cp-1", "gw-1", "tm-1"] {
        let f = out.path().join(node).join("deployment.toml");
        let text = std::fs::read_to_string(&f).unwrap();
        let _: toml::Table = text.parse().unwrap();
        assert!(
            text.contains("password = \"sharedadmin\""),
            "files carry the real secrets"
        );
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    for machine in ["vm-cp", "vm-gw", "vm-tm"] {
        let hosts = std::fs::read_to_string(out.path().join(format!("{machine}.hosts"))).unwrap();
        assert!(hosts.contains("10.0.0.11 cp.wso2.com\n10.0.0.21 gw.wso2.com\n10.0.0.31 tm.wso2.com\n10.0.0.5 db.wso2.com\n"), "{hosts}");
    }
    let order = std::fs::read_to_string(out.path().join("start-order.txt")).unwrap();
    assert!(
        order.contains("tier 1: cp-1\ntier 2: tm-1\ntier 3: gw-1\n"),
        "{order}"
    );
}

#[test]
fn render_of_an_unknown_node_fails() {
    let plan = examples_dir().join("v3-single.toml");
    apimctl()
        .args([
            "render",
            "--skip-pack-check",
            plan.to_str().unwrap(),
            "--node",
            "nope",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no node named `nope`"));
}

#[test]
fn render_of_an_invalid_plan_writes_nothing() {
    let f = Fixture::new();
    let path = f.dir.path().join("plan.toml");
    std::fs::write(
        &path,
        f.base_plan()
            .replace("role = \"gateway\"", "role = \"gatway\""),
    )
    .unwrap();
    let out = f.dir.path().join("out");
    apimctl()
        .args([
            "render",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown role `gatway`"));
    assert!(!out.exists());
}

#[test]
fn render_out_never_writes_outside_its_folder() {
    let f = Fixture::new();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("a/b/out");
    let plan = f.dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        f.base_plan()
            .replacen("name = \"cp-1\"", "name = \"../../etc\"", 1),
    )
    .unwrap();
    apimctl()
        .args([
            "render",
            plan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "node name `../../etc` is not allowed",
        ));
    let written: Vec<_> = walk(root.path());
    assert!(written.is_empty(), "files written: {written:?}");
}

#[test]
fn render_builds_on_the_local_packs_and_warns_of_keys_they_never_read() {
    let f = Fixture::new();
    let path = f.dir.path().join("plan.toml");
    std::fs::write(&path, f.base_plan()).unwrap();
    let out = f.dir.path().join("plain");
    apimctl()
        .args([
            "render",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .assert()
        .code(0)
        .stderr(predicate::str::is_empty());
    let gw = std::fs::read_to_string(out.join("gw-1/deployment.toml")).unwrap();
    assert!(
        gw.contains("name = \"userPostSelfRegistration\""),
        "the pack's own key: {gw}"
    );
    let header = std::fs::read_to_string(out.join("gw-1/commands.txt")).unwrap();
    assert!(
        header.contains("# base:      wso2am-universal-gw-4.5.0/repository/conf/deployment.toml"),
        "{header}"
    );

    // Packs whose product reads exactly what the renderer writes for this plan.
    let docs: Vec<String> = ["cp-1", "gw-1", "tm-1"]
        .iter()
        .map(|n| std::fs::read_to_string(out.join(n).join("deployment.toml")).unwrap())
        .collect();
    let template = apim_testkit::plans::template_reading(docs.iter().map(String::as_str));
    for top in f.shas.keys() {
        let zip = apim_testkit::plans::pack_with(top, std::slice::from_ref(&template));
        std::fs::write(f.dir.path().join("dist").join(format!("{top}.zip")), zip).unwrap();
    }
    let text = format!(
        "{}\n[overrides]\n\"role:gateway\" = '''\n[apim.cors]\nallow_orgins = \"https://x.example.com\"\n'''\n",
        f.base_plan()
    );
    std::fs::write(&path, &text).unwrap();
    let line = text[..text.find("allow_orgins").unwrap()].lines().count() + 1;
    let at = format!(
        "{}:{line}:1: warning: node gw-1: `apim.cors.allow_orgins`",
        path.display()
    );
    apimctl()
        .args([
            "render",
            path.to_str().unwrap(),
            "--skip-pack-check",
            "--node",
            "gw-1",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("allow_orgins"))
        .stderr(predicate::str::contains(at.as_str()))
        .stderr(predicate::str::contains(
            "did you mean `apim.cors.allow_origins`?",
        ));
    let strict = f.dir.path().join("strict");
    apimctl()
        .args([
            "render",
            path.to_str().unwrap(),
            "--skip-pack-check",
            "--strict",
            "--out",
            strict.to_str().unwrap(),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(at.replace("warning", "error")));
    assert!(!strict.exists(), "nothing written");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn render_shows_each_nodes_java_opts_and_memory_need_in_its_header() {
    let f = Fixture::new();
    let path = f.dir.path().join("plan.toml");
    let plan = format!(
        "{}\n[jvm]\nheap_max = \"2g\"\n\n[jvm.\"node:gw-1\"]\nheap_min = \"2g\"\noptions = [\"-XX:+UseG1GC\"]\n",
        f.base_plan()
    );
    std::fs::write(&path, plan).unwrap();
    let out = apimctl()
        .args(["render", path.to_str().unwrap()])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains(
            "# jvm:       JAVA_OPTS=\"-Xms2g -Xmx2g -XX:+UseG1GC\"; needs 2765 MiB of memory\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("# jvm:       JAVA_OPTS=\"-Xmx2g\"; needs 2765 MiB of memory\n"),
        "{out}"
    );
    std::fs::write(&path, f.base_plan()).unwrap();
    apimctl()
        .args(["render", path.to_str().unwrap(), "--node", "gw-1"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "# jvm:       the start scripts' heap (-Xms256m -Xmx1024m); needs 1639 MiB of memory\n",
        ));
}

/// `[tls] issuer = "provided"` is checked where the files are: validate and render open the
/// keystore with its password, and warn of nodes its certificate does not name.
#[test]
fn validate_and_render_check_a_provided_keystore_where_it_is() {
    let f = Fixture::new();
    let stores = apim_testkit::ca::provided_stores(
        &["cp.example.com", "*.example.org", "tm.example.com"],
        apim_certs::StoreFormat::Jks,
        "wso2carbon",
        "s3cret",
        "wso2carbon",
    );
    std::fs::create_dir(f.dir.path().join("certs")).unwrap();
    std::fs::write(f.dir.path().join("certs/ks.jks"), &stores.keystore).unwrap();
    std::fs::write(f.dir.path().join("certs/trust.jks"), &stores.truststore).unwrap();
    let text = f.base_plan().replace(
        "[tls]\n",
        "[tls]\nissuer = \"provided\"\nprovided_keystore = \"certs/ks.jks\"\n\
         provided_truststore = \"certs/trust.jks\"\n",
    );
    let path = f.dir.path().join("plan.toml");
    std::fs::write(&path, &text).unwrap();
    let at = |needle: &str| {
        let (line, col) = apim_plan::diag::line_col(&text, text.find(needle).unwrap());
        format!("{}:{line}:{col}", path.display())
    };
    let warning = format!(
        "{}: warning: node `gw-1`: the provided certificate (`certs/ks.jks` alias `wso2carbon`) \
         does not name gw.example.com; it names cp.example.com, *.example.org, tm.example.com",
        at("\"gw.example.com\"")
    );
    apimctl()
        .args(["validate", path.to_str().unwrap()])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("ok (t wso2am-4.5.0"))
        .stderr(predicate::str::contains(warning.as_str()));
    apimctl()
        .args(["render", path.to_str().unwrap(), "--node", "gw-1"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "[keystore.primary]\nfile_name = \"wso2carbon.jks\"",
        ))
        .stdout(predicate::str::contains(
            "# cert:      the provided keystore's `wso2carbon` (must name gw.example.com)",
        ))
        .stderr(predicate::str::contains(warning.as_str()));
    apimctl()
        .args(["render", path.to_str().unwrap(), "--strict"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            warning.replace("warning:", "error:").as_str(),
        ));

    // The wrong password: an error at provided_keystore, the password never shown.
    std::fs::write(f.dir.path().join("secrets/ks"), "Wr0ng-pass\n").unwrap();
    apimctl()
        .args(["validate", path.to_str().unwrap()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "{}: error: `certs/ks.jks` does not open with keystore_password",
            at("\"certs/ks.jks\"")
        )))
        .stderr(predicate::str::contains("Wr0ng-pass").not())
        .stderr(predicate::str::contains("s3cret").not());

    // A truststore that is not one: an error at provided_truststore.
    std::fs::write(f.dir.path().join("secrets/ks"), "s3cret\n").unwrap();
    std::fs::write(
        f.dir.path().join("certs/trust.jks"),
        "-----BEGIN CERTIFICATE-----",
    )
    .unwrap();
    apimctl()
        .args(["validate", path.to_str().unwrap()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "{}: error: `certs/trust.jks` cannot be read as a keystore: neither a JKS nor a \
             PKCS#12 keystore",
            at("\"certs/trust.jks\"")
        )));
}

/// An operator certificate, key and CA written by `apimctl controller operator-cert` into
/// `dir/op`; the three paths.
fn operator_files(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    apimctl()
        .args(["controller", "operator-cert", "--name", "t", "--out"])
        .arg(dir.join("op"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .assert()
        .code(0);
    ["ca.pem", "operator.pem", "operator-key.pem"].map(|f| dir.join("op").join(f))
}

/// A controller address where nothing listens (a port just released).
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn an_unreachable_controller_exits_3_with_the_address_what_listens_and_the_files() {
    let d = tempfile::tempdir().unwrap();
    let [ca, cert, key] = operator_files(d.path());
    let addr = closed_port();
    let run = |extra: &[&str]| {
        apimctl()
            .arg("status")
            .args(extra)
            .env("APIMCTL_CONTROLLER", &addr)
            .env("APIMCTL_CA", &ca)
            .env("APIMCTL_CERT", &cert)
            .env("APIMCTL_KEY", &key)
            .env("APIMCTL_CONFIG", d.path().join("none.toml"))
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!("error: cannot reach the controller at {addr}: ")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: nothing listens on {addr} (TCP connection refused)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: files used: CA {}, certificate {}, key {}",
            ca.display(),
            cert.display(),
            key.display()
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // -o json: the error is the one document on stdout, with the same exit code.
    let out = run(&["-o", "json"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let e = &doc["error"];
    assert_eq!(e["code"], "unreachable", "{doc}");
    assert_eq!(e["exit_code"], 3, "{doc}");
    assert_eq!(e["controller"]["address"], addr.as_str(), "{doc}");
    assert_eq!(e["controller"]["listening"], false, "{doc}");
    assert_eq!(e["controller"]["cert"], cert.to_str().unwrap(), "{doc}");
    assert!(
        e["hint"]
            .as_str()
            .is_some_and(|h| h.contains("nothing listens")),
        "{doc}"
    );
}

#[test]
fn json_errors_of_local_failures_are_json_too() {
    let d = tempfile::tempdir().unwrap();
    let out = apimctl()
        .args(["plan", "missing.toml", "-o", "json"])
        .current_dir(d.path())
        .env("APIMCTL_CONFIG", d.path().join("none.toml"))
        .env_remove("APIMCTL_CONTROLLER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["error"]["exit_code"], 1, "{doc}");
    assert!(doc["error"]["code"].is_string(), "{doc}");
}

#[test]
fn every_command_shows_examples_and_exit_codes_in_its_help() {
    for cmd in [
        &["status"][..],
        &["token", "create"],
        &["plan"],
        &["revoke"],
    ] {
        let out = apimctl().args(cmd).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("\nExamples:\n  apimctl "), "{cmd:?}: {text}");
        assert!(text.contains("\nExit codes:\n  0  "), "{cmd:?}: {text}");
    }
    let plan = apimctl().args(["plan", "--help"]).output().unwrap();
    let plan = String::from_utf8(plan.stdout).unwrap();
    assert!(plan.contains("  2  something would change"), "{plan}");
}

#[test]
fn shell_completions_know_every_command() {
    let bash = apimctl().args(["completions", "bash"]).output().unwrap();
    assert_eq!(bash.status.code(), Some(0));
    let bash = String::from_utf8(bash.stdout).unwrap();
    assert!(bash.contains("complete -F _apimctl"), "{bash}");
    for sub in [
        "validate",
        "render",
        "apply",
        "plan",
        "status",
        "agents",
        "token",
        "revoke",
        "rollout",
        "history",
        "rollback",
        "renew-cert",
        "controller",
        "completions",
        "man",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(
        bash.contains("--watch") && bash.contains("--yes"),
        "flags too"
    );
    let zsh = apimctl().args(["completions", "zsh"]).output().unwrap();
    assert!(
        String::from_utf8(zsh.stdout)
            .unwrap()
            .starts_with("#compdef apimctl")
    );
    let fish = apimctl().args(["completions", "fish"]).output().unwrap();
    assert!(
        String::from_utf8(fish.stdout)
            .unwrap()
            .contains("complete -c apimctl")
    );
    apimctl()
        .args(["completions", "tcsh"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid value 'tcsh'"));
}

#[test]
fn the_man_page_comes_from_the_command_line() {
    let out = apimctl().arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH APIMCTL 1"), "{page}");
    assert!(
        page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"),
        "{page}"
    );
    assert!(
        page.contains("Exit codes"),
        "the help's end is in the page too"
    );
    for sub in ["apply", "status", "revoke", "completions"] {
        assert!(page.contains(sub), "{sub}");
    }

    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man1");
    apimctl().args(["man", "--out"]).arg(&dir).assert().code(0);
    let status = std::fs::read_to_string(dir.join("apimctl-status.1")).unwrap();
    assert!(status.contains(".TH APIMCTL-STATUS 1"), "{status}");
    assert!(status.contains("\\-\\-watch"), "{status}");
    assert!(dir.join("apimctl.1").exists());
    assert!(dir.join("apimctl-token-create.1").exists());
}

#[test]
fn a_list_of_unreachable_controllers_exits_3_naming_each() {
    let d = tempfile::tempdir().unwrap();
    let [ca, cert, key] = operator_files(d.path());
    // Two distinct ports, both released.
    let (first, second) = {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (
            a.local_addr().unwrap().to_string(),
            b.local_addr().unwrap().to_string(),
        )
    };
    let out = apimctl()
        .args(["status", "-o", "json", "--controller"])
        .arg(format!("{first}, {second}"))
        .env("APIMCTL_CA", &ca)
        .env("APIMCTL_CERT", &cert)
        .env("APIMCTL_KEY", &key)
        .env("APIMCTL_CONFIG", d.path().join("none.toml"))
        .env_remove("APIMCTL_CONTROLLER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let e = &doc["error"];
    assert_eq!(e["code"], "unreachable", "{doc}");
    assert_eq!(
        e["controller"]["addresses"],
        serde_json::json!([first, second]),
        "{doc}"
    );
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "cannot reach any of the 2 controllers tried: {first} ("
        )) && message.contains(&format!(", {second} (")),
        "{doc}"
    );
    let hint = e["hint"].as_str().unwrap_or_default();
    for addr in [&first, &second] {
        assert!(
            hint.contains(&format!(
                "nothing listens on {addr} (TCP connection refused)"
            )),
            "{doc}"
        );
    }
    // Without -o json: the same on stderr, one hint per address.
    let out = apimctl()
        .args(["status", "--controller"])
        .arg(format!("{first},{second}"))
        .env("APIMCTL_CA", &ca)
        .env("APIMCTL_CERT", &cert)
        .env("APIMCTL_KEY", &key)
        .env("APIMCTL_CONFIG", d.path().join("none.toml"))
        .env_remove("APIMCTL_CONTROLLER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    for addr in [&first, &second] {
        assert!(
            err.contains(&format!(
                "hint: nothing listens on {addr} (TCP connection refused)"
            )),
            "{err}"
        );
    }
}
