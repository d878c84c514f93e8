//! One failing test per validation rule: each checks the message and the line:col it names.

use std::collections::BTreeMap;

use apim_plan::diag::Severity;

use apim_testkit::plans::{Fixture, expect_error, expect_error_at, tiny_pack};

fn with(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "`{from}` not in base plan");
    base.replacen(from, to, 1)
}

#[test]
fn base_plan_is_valid() {
    let f = Fixture::new();
    let r = f.check(&f.base_plan());
    assert!(r.diagnostics.is_empty(), "{}", r.render());
}

#[test]
fn toml_syntax_error() {
    let f = Fixture::new();
    let text = with(&f.base_plan(), "name = \"vm-2\"", "name = \"vm-2");
    let r = f.check(&text);
    // The parser stops where the closing quote should be: the end of that line.
    expect_error_at(&r, &text, "TOML syntax", text.find("\"vm-2\n").unwrap() + 5);
}

#[test]
fn unknown_field_suggests_the_near_name() {
    let f = Fixture::new();
    let text = with(
        &f.base_plan(),
        "hostname = \"gw.example.com\"",
        "hostnmae = \"gw.example.com\"",
    );
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "unknown field `hostnmae` in [[nodes]] #3",
        "hostnmae",
    );
    assert!(out.contains("did you mean `hostname`?"), "{out}");
    assert!(out.contains("^^^^^^^^"), "the key is underlined:\n{out}");
    // The node also lacks its hostname now: both are reported.
    assert!(
        r.diagnostics
            .iter()
            .any(|d| d.message.contains("missing `hostname`")),
        "{}",
        r.render()
    );
}

#[test]
fn unknown_top_level_table() {
    let f = Fixture::new();
    let text = format!("{}\n[rolout]\nmax_parallel = 2\n", f.base_plan());
    let r = f.check(&text);
    let out = expect_error(&r, &text, "unknown field `rolout`", "rolout");
    assert!(out.contains("did you mean `rollout`?"), "{out}");
}

#[test]
fn duplicate_machine_name() {
    let f = Fixture::new();
    let text = with(&f.base_plan(), "name = \"vm-2\"", "name = \"vm-1\"");
    let r = f.check(&text);
    // The second "vm-1" is the duplicate.
    let second = text.match_indices("name = \"vm-1\"").nth(1).unwrap().0;
    expect_error_at(
        &r,
        &text,
        "duplicate machine name `vm-1`",
        second + "name = ".len(),
    );
}

#[test]
fn duplicate_node_name() {
    let f = Fixture::new();
    let text = with(&f.base_plan(), "name = \"tm-1\"", "name = \"cp-1\"");
    let r = f.check(&text);
    expect_error_at(
        &r,
        &text,
        "duplicate node name `cp-1`",
        text.rfind("\"cp-1\"").unwrap(),
    );
}

#[test]
fn duplicate_hostname() {
    let f = Fixture::new();
    let text = with(
        &f.base_plan(),
        "hostname = \"gw.example.com\"",
        "hostname = \"cp.example.com\"\n",
    );
    let r = f.check(&text);
    expect_error_at(
        &r,
        &text,
        "same hostname `cp.example.com` as node `cp-1`",
        text.rfind("\"cp.example.com\"").unwrap(),
    );
}

#[test]
fn node_on_unknown_machine() {
    let f = Fixture::new();
    let text = with(&f.base_plan(), "machine = \"vm-2\"", "machine = \"vm-3\"");
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "node `gw-1` is on unknown machine `vm-3`",
        "\"vm-3\"",
    );
    assert!(
        out.contains("did you mean `vm-1`?") || out.contains("did you mean `vm-2`?"),
        "{out}"
    );
}

#[test]
fn offset_ports_collide_on_one_machine() {
    let f = Fixture::new();
    // tm-1 shares vm-1 with cp-1 (offset 0): 9611 + 100 = 9711.
    let text = with(&f.base_plan(), "offset = 1", "offset = 100");
    let r = f.check(&text);
    let out = expect_error_at(
        &r,
        &text,
        "node `tm-1` (offset 100) and node `cp-1` (offset 0) both use port",
        text.find("offset = 100").unwrap() + "offset = ".len(),
    );
    assert!(out.contains("machine `vm-1`"), "{out}");
}

#[test]
fn several_nodes_of_a_role_need_a_load_balancer() {
    let f = Fixture::new();
    let text = format!(
        "{}\n[[nodes]]\nname = \"tm-2\"\nmachine = \"vm-2\"\nrole = \"traffic-manager\"\nhostname = \"tm2.example.com\"\noffset = 1\n",
        f.base_plan()
    );
    let r = f.check(&text);
    let second_role = text.rfind("\"traffic-manager\"\nhostname = \"tm2").unwrap();
    let out = expect_error(
        &r,
        &text,
        "role `traffic-manager` has 2 nodes and no load balancer hostname",
        &text[second_role..],
    );
    assert!(out.contains("[load_balancers] traffic-manager"), "{out}");
}

#[test]
fn a_required_role_has_no_node() {
    let f = Fixture::new();
    let text = with(
        &f.base_plan(),
        "[[nodes]]\nname = \"tm-1\"\nmachine = \"vm-1\"\nrole = \"traffic-manager\"\nhostname = \"tm.example.com\"\noffset = 1\n",
        "",
    );
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "wso2am-4.5.0 needs a `traffic-manager` node and the plan has none",
        "\"wso2am-4.5.0\"",
    );
}

#[test]
fn a_role_the_release_does_not_have() {
    let f = Fixture::new();
    let text = format!(
        "{}\n[[nodes]]\nname = \"pub-1\"\nmachine = \"vm-2\"\nrole = \"publisher\"\nhostname = \"pub.example.com\"\noffset = 1\n",
        f.base_plan()
    );
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "wso2am-4.5.0 has no `publisher` role (node `pub-1`)",
        "\"publisher\"",
    );
    assert!(
        out.contains("control-plane, traffic-manager, gateway, key-manager"),
        "{out}"
    );
}

#[test]
fn an_unknown_role_name() {
    let f = Fixture::new();
    let text = with(&f.base_plan(), "role = \"gateway\"", "role = \"gatway\"");
    let r = f.check(&text);
    let out = expect_error(&r, &text, "unknown role `gatway`", "\"gatway\"");
    assert!(out.contains("did you mean `gateway`?"), "{out}");
}

#[test]
fn a_release_that_is_not_supported() {
    let f = Fixture::new();
    let text = with(&f.base_plan(), "wso2am-4.5.0", "wso2am-2.6.0");
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "WSO2 API Manager 2.6.0 is not supported",
        "\"wso2am-2.6.0\"",
    );
}

#[test]
fn env_secret_that_is_not_set() {
    let f = Fixture::new();
    let text = with(
        &f.base_plan(),
        "password = { file = \"secrets/admin\" }",
        "password = { env = \"APIM_ADMIN_PW\" }",
    );
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "admin password: environment variable `APIM_ADMIN_PW` is not set",
        "\"APIM_ADMIN_PW\"",
    );
    // The same plan is fine once the variable exists.
    let env: BTreeMap<String, String> = [("APIM_ADMIN_PW".to_string(), "x".to_string())].into();
    assert!(!f.check_env(&text, &env).has_errors());
}

#[test]
fn file_secret_that_cannot_be_read() {
    let f = Fixture::new();
    let text = with(
        &f.base_plan(),
        "keystore_password = { file = \"secrets/ks\" }",
        "keystore_password = { file = \"secrets/nope\" }",
    );
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "keystore password: cannot read secret file",
        "\"secrets/nope\"",
    );
}

#[test]
fn literal_secret_is_a_warning() {
    let f = Fixture::new();
    let text = with(
        &f.base_plan(),
        "password = { file = \"secrets/admin\" }",
        "password = \"admin\"",
    );
    let r = f.check(&text);
    assert!(!r.has_errors(), "{}", r.render());
    let w = r
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Warning)
        .unwrap();
    assert!(w.message.contains("literal secret"), "{}", w.message);
    let (line, col) = apim_plan::diag::line_col(&text, text.find("\"admin\"").unwrap());
    assert_eq!(r.location(w), format!("{}:{line}:{col}", r.path));
}

#[test]
fn pack_that_does_not_exist() {
    let f = Fixture::new();
    let text = with(
        &f.base_plan(),
        "dist/wso2am-tm-4.5.0.zip",
        "dist/missing.zip",
    );
    let r = f.check(&text);
    expect_error(&r, &text, "pack `", "\"dist/missing.zip\"");
}

#[test]
fn pack_whose_sha256_differs() {
    let f = Fixture::new();
    let wrong = "ab".repeat(32);
    let text = with(
        &f.base_plan(),
        &format!(
            "traffic-manager = {{ path = \"dist/wso2am-tm-4.5.0.zip\", sha256 = \"{}\"",
            f.sha
        ),
        &format!("traffic-manager = {{ path = \"dist/wso2am-tm-4.5.0.zip\", sha256 = \"{wrong}\""),
    );
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "not the one in the plan",
        &format!("\"{wrong}\""),
    );
}

#[test]
fn override_for_an_unknown_node() {
    let f = Fixture::new();
    let text = format!(
        "{}\n[overrides]\n\"node:gw-9\" = '''\n[apim.cors]\nallow_origins = \"*\"\n'''\n",
        f.base_plan()
    );
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "override for unknown node `gw-9`",
        "\"node:gw-9\"",
    );
    assert!(out.contains("did you mean `node:gw-1`?"), "{out}");
}

#[test]
fn override_that_is_not_toml_points_inside_the_fragment() {
    let f = Fixture::new();
    let text = format!(
        "{}\n[overrides]\n\"role:gateway\" = '''\n[apim.cors]\nallow_origins = *\n'''\n",
        f.base_plan()
    );
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "override `role:gateway` is not valid TOML",
        "*\n'''",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let f = Fixture::new();
    let mut text = with(&f.base_plan(), "machine = \"vm-2\"", "machine = \"vm-3\"");
    text = with(&text, "address = \"10.0.0.2\"", "address = \"10.0.0.1\"");
    text = with(&text, "role = \"gateway\"", "role = \"gateway\"\nofset = 2");
    let r = f.check(&text);
    let (errors, _) = r.counts();
    assert!(errors >= 3, "{}", r.render());
    // Sorted by position in the file.
    let starts: Vec<usize> = r.diagnostics.iter().map(|d| d.span.start).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_pack_with_an_unsafe_entry_or_another_top_directory_is_refused() {
    use std::io::Write as _;
    let f = Fixture::new();
    let evil = {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default();
        w.start_file("wso2am-tm-4.5.0/bin/ok.sh", o).unwrap();
        w.start_file("wso2am-tm-4.5.0/../../etc/cron.d/x", o)
            .unwrap();
        w.write_all(b"* * * * * root id").unwrap();
        w.finish().unwrap().into_inner()
    };
    for (bytes, message) in [
        (evil, "parent-directory (..) component"),
        (
            tiny_pack("wso2am-4.2.0"),
            "its top directory is `wso2am-4.2.0`, the release needs `wso2am-tm-4.5.0`",
        ),
    ] {
        std::fs::write(f.dir.path().join("dist/bad.zip"), &bytes).unwrap();
        let text = with(
            &f.base_plan(),
            &format!(
                "traffic-manager = {{ path = \"dist/wso2am-tm-4.5.0.zip\", sha256 = \"{}\"",
                f.sha
            ),
            &format!(
                "traffic-manager = {{ path = \"dist/bad.zip\", sha256 = \"{}\"",
                apim_plan::digest(&bytes)
            ),
        );
        let r = f.check(&text);
        let out = expect_error(&r, &text, message, "\"dist/bad.zip\"");
        assert!(out.contains("pack `"), "{out}");
    }
}

#[test]
fn unsafe_names_and_paths_are_refused_where_they_are_written() {
    let f = Fixture::new();
    let huge = "c".repeat(1 << 20);
    let cases: [(&str, &str, &str); 8] = [
        (
            "name = \"cp-1\"",
            "name = \"../../etc\"",
            "node name `../../etc` is not allowed",
        ),
        (
            "name = \"cp-1\"",
            "name = \"cp;reboot\"",
            "node name `cp;reboot` is not allowed",
        ),
        (
            "name = \"vm-1\"",
            "name = \"m2$(id)\"",
            "machine name `m2$(id)` is not allowed",
        ),
        (
            "name = \"t\"",
            &format!("name = \"{huge}\""),
            "cluster name is 1048576 characters long (at most 63)",
        ),
        (
            "java_home = \"/usr/lib/jvm/java-17\"",
            "java_home = \"/usr/lib/jvm/java-17\"\ninstall_dir = \"/opt/../../etc\"",
            "`install_dir` `/opt/../../etc` must not hold `.` or `..` components",
        ),
        (
            "java_home = \"/usr/lib/jvm/java-17\"",
            "java_home = \"/usr/lib/jvm/java-17\"\ninstall_dir = \"opt/wso2\"",
            "`install_dir` `opt/wso2` must be an absolute path",
        ),
        (
            "java_home = \"/usr/lib/jvm/java-17\"",
            "java_home = \"/usr/lib/jvm/$(reboot)\"",
            "`java_home` `/usr/lib/jvm/$(reboot)` may only hold",
        ),
        (
            "java_home = \"/usr/lib/jvm/java-17\"",
            "java_home = \"/usr/lib/jvm/java-17\"\nrun_as = \"wso2;id\"",
            "`run_as` `wso2;id` is not a valid user name",
        ),
    ];
    for (from, to, message) in cases {
        let text = with(&f.base_plan(), from, to);
        let r = f.check(&text);
        let at = to.rsplit_once(" = ").map_or(to, |(_, v)| v);
        let at = if at.len() > 100 { &at[..100] } else { at };
        expect_error(&r, &text, message, at);
    }
}

#[test]
fn a_bad_offset_or_database_type_is_reported_once_where_it_is_written() {
    let f = Fixture::new();
    for (to, message) in [
        (
            "offset = \"x\"",
            "`offset` in [[nodes]] #2 must be an integer, found string",
        ),
        (
            "offset = -1",
            "`offset` in [[nodes]] #2 is -1, outside 0..=60000",
        ),
        (
            "offset = 99999999999999999999",
            "`offset` in [[nodes]] #2 is 99999999999999999999, outside 0..=60000",
        ),
    ] {
        let text = with(&f.base_plan(), "offset = 1", to);
        let r = f.check(&text);
        expect_error_at(
            &r,
            &text,
            message,
            text.find(to).unwrap() + "offset = ".len(),
        );
        let errors: Vec<&str> = r
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.message.as_str())
            .collect();
        assert_eq!(errors, [message], "one error, no spurious port collision");
    }
    let text = with(&f.base_plan(), "type = \"mysql\"", "type = \"mongo\"");
    let r = f.check(&text);
    let errors: Vec<&str> = r
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        errors,
        ["unknown database type `mongo`"],
        "not also `plan has no [databases.…]`"
    );
}

/// A second gateway on vm-2 (offset 10), named `gw-2`, with `extra` lines in its entry, and a
/// load balancer in front of both.
fn with_second_gateway(base: &str, extra: &str) -> String {
    format!(
        "{base}\n[[nodes]]\nname = \"gw-2\"\nmachine = \"vm-2\"\nrole = \"gateway\"\nhostname = \"gw2.example.com\"\noffset = 10\n{extra}\n[load_balancers]\ngateway = \"gw-lb.example.com\"\n"
    )
}

#[test]
fn a_gateway_label_that_is_not_its_environment_name() {
    let f = Fixture::new();
    let text = format!(
        "{}\n[[gateway_environments]]\nname = \"External\"\nlabel = \"external\"\n",
        f.base_plan()
    );
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "gateway environment `External` has label `external`",
        "\"external\"",
    );
    assert!(
        out.contains("deploys APIs to an environment by its name"),
        "{out}"
    );
    assert!(out.contains("label = \"External\""), "{out}");
    // Without the label, or with the name as the label, its gateways subscribe to the name.
    for label in ["", "label = \"External\"\n"] {
        let text = format!(
            "{}\n[[gateway_environments]]\nname = \"External\"\n{label}",
            f.base_plan()
        );
        let r = f.check(&text);
        assert!(!r.has_errors(), "{}", r.render());
    }
}

#[test]
fn a_duplicate_gateway_id_names_both_nodes() {
    let f = Fixture::new();
    // Both written.
    let base = with(
        &f.base_plan(),
        "hostname = \"gw.example.com\"",
        "hostname = \"gw.example.com\"\ngateway_id = \"gw-a\"",
    );
    let text = with_second_gateway(&base, "gateway_id = \"gw-a\"\n");
    let r = f.check(&text);
    expect_error_at(
        &r,
        &text,
        "gateway_id `gw-a` of gateway node `gw-2` (written) is also the gateway_id of gateway node `gw-1` (written)",
        text.rfind("\"gw-a\"").unwrap(),
    );
    // One defaulted to its node's name, the other written as that name.
    let text = with_second_gateway(&f.base_plan(), "gateway_id = \"gw-1\"\n");
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "gateway_id `gw-1` of gateway node `gw-2` (written) is also the gateway_id of gateway node `gw-1` (its name, by default)",
        "\"gw-1\"\n\n[load",
    );
    assert!(out.contains("give every gateway a different one"), "{out}");
    // Unique ids (defaulted names) are fine.
    let r = f.check(&with_second_gateway(&f.base_plan(), ""));
    assert!(!r.has_errors(), "{}", r.render());
}

#[test]
fn a_gateway_in_no_environment() {
    let f = Fixture::new();
    let text = format!(
        "{}\n[[gateway_environments]]\nname = \"Default\"\ngateways = [\"gw-1\"]\n",
        with_second_gateway(&f.base_plan(), "")
    );
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "gateway node `gw-2` is in no gateway environment (Default)",
        "\"gw-2\"",
    );
    assert!(
        out.contains("add \"gw-2\" to an environment's `gateways`"),
        "{out}"
    );
}

#[test]
fn analytics_enabled_on_4x_needs_its_endpoint_and_token() {
    let f = Fixture::new();
    let text = format!("{}\n[analytics]\nenabled = true\n", f.base_plan());
    let r = f.check(&text);
    expect_error_at(
        &r,
        &text,
        "[analytics] enabled = true on wso2am-4.5.0 needs `config_endpoint` and `auth_token`",
        text.rfind("true").unwrap(),
    );
    let text = format!(
        "{}\n[analytics]\nenabled = true\nconfig_endpoint = \"https://analytics.example.com/auth/v1\"\n",
        f.base_plan()
    );
    let r = f.check(&text);
    expect_error_at(
        &r,
        &text,
        "needs `auth_token`:",
        text.rfind("true").unwrap(),
    );
    let text = format!(
        "{}\n[analytics]\nenabled = true\nconfig_endpoint = \"http://analytics.example.com\"\nauth_token = {{ file = \"secrets/ks\" }}\n",
        f.base_plan()
    );
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "`config_endpoint` `http://analytics.example.com` must be an https:// URL",
        "\"http://analytics",
    );
}

#[test]
fn analytics_cloud_settings_on_3x_are_refused() {
    let text = std::fs::read_to_string(apim_testkit::plans::examples_dir().join("v3-single.toml"))
        .unwrap()
        + "\n[analytics]\nenabled = true\nauth_token = \"t\"\n";
    let path = apim_testkit::plans::examples_dir().join("v3-single.toml");
    let env = BTreeMap::new();
    let (_, r) = apim_plan::validate::check(
        &path,
        &text,
        &env,
        apim_plan::validate::Options {
            verify_packs: false,
        },
    );
    let out = expect_error(
        &r,
        &text,
        "[analytics] `auth_token` is a 4.x analytics-cloud setting; wso2am-3.2.0 publishes",
        "\"t\"\n",
    );
    assert!(out.contains("store_api_url"), "{out}");
}
