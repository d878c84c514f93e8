//! The rules of the plan's settings: `[jvm]` sizes, options and scopes, and `[rollout] drift`;
//! each checks the message and the line:col it names.

use std::collections::BTreeMap;

use apim_testkit::plans::{Fixture, expect_error, expect_error_at};

/// The base plan with a `[jvm]` section appended.
fn with_jvm(f: &Fixture, jvm: &str) -> String {
    format!("{}\n{jvm}", f.base_plan())
}

#[test]
fn jvm_sizes_are_checked_where_they_are_written() {
    let f = Fixture::new();
    let cases = [
        (
            "[jvm]\nheap_max = \"2gb\"\n",
            "`heap_max` in [jvm] is `2gb`, not a heap size",
            "\"2gb\"",
        ),
        (
            "[jvm]\nheap_max = \"1.5g\"\n",
            "`heap_max` in [jvm] is `1.5g`, not a heap size",
            "\"1.5g\"",
        ),
        (
            "[jvm.\"role:gateway\"]\nheap_max = \"64m\"\n",
            "`heap_max` in [jvm.\"role:gateway\"] is 64m, outside 256m..=1024g",
            "\"64m\"",
        ),
        (
            "[jvm]\nheap_min = \"2g\"\nheap_max = \"1g\"\n",
            "`heap_min` 2g in [jvm] is above its `heap_max` 1g",
            "\"2g\"",
        ),
        (
            "[jvm]\nheap_min = \"3g\"\n",
            "`heap_min` 3g ([jvm]) is above the default heap_max 1024m (the start scripts' -Xmx1024m) for node(s) cp-1, tm-1, gw-1",
            "\"3g\"",
        ),
        (
            "[jvm]\nheap_max = 2\n",
            "`heap_max` in [jvm] must be a string, found integer",
            "2\n",
        ),
    ];
    for (jvm, message, at) in cases {
        let text = with_jvm(&f, jvm);
        let r = f.check(&text);
        let at = text.rfind(at).unwrap();
        expect_error_at(&r, &text, message, at);
    }
}

#[test]
fn jvm_heap_across_scopes_names_the_nodes_at_the_narrower_value() {
    let f = Fixture::new();
    let text = with_jvm(
        &f,
        "[jvm]\nheap_min = \"2g\"\nheap_max = \"4g\"\n\n[jvm.\"node:gw-1\"]\nheap_max = \"1g\"\n",
    );
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "`heap_min` 2g ([jvm]) is above `heap_max` 1g ([jvm.\"node:gw-1\"]) for node(s) gw-1",
        "\"1g\"",
    );
    assert!(out.contains("set the other one there too"), "{out}");
    let (errors, _) = r.counts();
    assert_eq!(errors, 1, "cp-1 and tm-1 are fine:\n{out}");
}

#[test]
fn jvm_options_are_one_word_and_not_what_apimctl_sets() {
    let f = Fixture::new();
    let cases = [
        (
            "-Dfoo=a b",
            "option `-Dfoo=a b` in [jvm] holds white space",
            "split it",
        ),
        (
            "-Xmx2g",
            "option `-Xmx2g` in [jvm] sets `-Xmx`, which apimctl sets",
            "use `heap_max` instead",
        ),
        (
            "-Dprofile=gateway-worker",
            "sets `-Dprofile=`, which apimctl sets",
            "the node's `role`",
        ),
        (
            "-DportOffset=3",
            "sets `-DportOffset=`",
            "the node's `offset`",
        ),
        (
            "XX:+UseG1GC",
            "option `XX:+UseG1GC` in [jvm] is not a JVM option",
            "start with `-`",
        ),
    ];
    for (option, message, hint) in cases {
        let text = with_jvm(
            &f,
            &format!("[jvm]\noptions = [\"-XX:+UseG1GC\", {option:?}]\n"),
        );
        let r = f.check(&text);
        let out = expect_error(&r, &text, message, &format!("{option:?}"));
        assert!(out.contains(hint), "{out}");
    }
}

#[test]
fn jvm_scopes_name_a_node_or_role_the_plan_has() {
    let f = Fixture::new();
    let text = with_jvm(&f, "[jvm.\"node:gw-9\"]\nheap_max = \"2g\"\n");
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "[jvm] settings for unknown node `gw-9`",
        "\"node:gw-9\"",
    );
    assert!(out.contains("did you mean `node:gw-1`?"), "{out}");

    let text = with_jvm(&f, "[jvm.\"role:publisher\"]\nheap_max = \"2g\"\n");
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "[jvm] settings for role `publisher`, which wso2am-4.5.0 does not have",
        "\"role:publisher\"",
    );

    let text = with_jvm(&f, "[jvm.\"role:gatway\"]\nheap_max = \"2g\"\n");
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "[jvm] scope `role:gatway` names no role",
        "\"role:gatway\"",
    );
    assert!(out.contains("did you mean `role:gateway`?"), "{out}");

    let text = with_jvm(&f, "[jvm]\nheap_maz = \"2g\"\n");
    let r = f.check(&text);
    let out = expect_error(&r, &text, "unknown field `heap_maz` in [jvm]", "heap_maz");
    assert!(out.contains("did you mean `heap_max`?"), "{out}");

    let text = with_jvm(&f, "[jvm.all]\nheap_max = \"2g\"\n");
    let r = f.check(&text);
    expect_error(&r, &text, "[jvm] scope `all` repeats [jvm] itself", "all]");
}

/// Node over role over cluster, field by field; options accumulate widest first; the memory
/// need is heap_max + 512 MiB + a tenth (the scripts' 1 GiB heap when nothing is said).
#[test]
fn jvm_scopes_merge_node_over_role_over_cluster() {
    let f = Fixture::new();
    let text = with_jvm(
        &f,
        "[jvm]\nheap_min = \"512m\"\nheap_max = \"2g\"\noptions = [\"-XX:+UseG1GC\"]\n\n\
         [jvm.\"role:gateway\"]\nheap_max = \"4G\"\noptions = [\"-Dgw=1\"]\n\n\
         [jvm.\"node:gw-1\"]\nheap_min = \"1g\"\noptions = [\"-XX:MaxGCPauseMillis=200\"]\n\n\
         [jvm.\"node:tm-1\"]\nheap_max = \"1g\"\n",
    );
    let path = f.dir.path().join("plan.toml");
    let env = BTreeMap::new();
    let (plan, r) = apim_plan::validate::check(&path, &text, &env, Default::default());
    let plan = plan.unwrap_or_else(|| panic!("{}", r.render()));
    let c = apim_plan::render::render(&plan, &env, &apim_plan::pack::PackSet::none()).unwrap();
    let jvm = |n: &str| c.node(n).unwrap().jvm.clone();
    assert_eq!(
        jvm("gw-1").java_opts,
        [
            "-Xms1g",
            "-Xmx4g",
            "-XX:+UseG1GC",
            "-Dgw=1",
            "-XX:MaxGCPauseMillis=200"
        ]
    );
    assert_eq!(jvm("gw-1").heap_max, 4 << 30);
    assert_eq!(
        jvm("gw-1").java_opts_value().unwrap(),
        "-Xms1g -Xmx4g -XX:+UseG1GC -Dgw=1 -XX:MaxGCPauseMillis=200"
    );
    assert_eq!(
        jvm("cp-1").java_opts,
        ["-Xms512m", "-Xmx2g", "-XX:+UseG1GC"]
    );
    assert_eq!(
        jvm("tm-1").java_opts,
        ["-Xms512m", "-Xmx1g", "-XX:+UseG1GC"]
    );
    let mib = |b: u64| b.div_ceil(1 << 20);
    assert_eq!(mib(jvm("gw-1").memory_bytes), 4096 + 512 + 410);
    assert_eq!(mib(jvm("cp-1").memory_bytes), 2048 + 512 + 205);
    // vm-1 runs cp-1 and tm-1: their needs add up.
    let vm1 = c.machines.iter().find(|m| m.name == "vm-1").unwrap();
    assert_eq!(
        vm1.memory_need(),
        jvm("cp-1").memory_bytes + jvm("tm-1").memory_bytes
    );

    // Nothing said: no JAVA_OPTS, the scripts' 1 GiB heap.
    let r = f.check(&f.base_plan());
    assert!(!r.has_errors());
    let (plan, _) = apim_plan::validate::check(&path, &f.base_plan(), &env, Default::default());
    let c =
        apim_plan::render::render(&plan.unwrap(), &env, &apim_plan::pack::PackSet::none()).unwrap();
    let gw = &c.node("gw-1").unwrap().jvm;
    assert!(gw.java_opts.is_empty() && gw.java_opts_value().is_none());
    assert_eq!(
        (gw.heap_max, mib(gw.memory_bytes)),
        (1 << 30, 1024 + 512 + 103)
    );
}

#[test]
fn rollout_drift_is_report_or_repair() {
    let f = Fixture::new();
    let base = f.base_plan();
    let path = std::path::Path::new("plan.toml");
    // Default: report.
    let (plan, diags) = apim_plan::plan::parse(path, &base);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        plan.expect("plan").rollout.drift.value,
        apim_plan::plan::DriftMode::Report
    );
    let text = format!("{base}\n[rollout]\ndrift = \"repair\"\n");
    let r = f.check(&text);
    assert!(r.diagnostics.is_empty(), "{}", r.render());
    let (plan, _) = apim_plan::plan::parse(path, &text);
    let drift = plan.expect("plan").rollout.drift;
    assert_eq!(drift.value, apim_plan::plan::DriftMode::Repair);
    assert_eq!(&text[drift.span.clone()], "\"repair\"");
    // Anything else is refused where it is written, with the near name.
    let text = format!("{base}\n[rollout]\ndrift = \"repiar\"\n");
    let r = f.check(&text);
    let out = expect_error_at(
        &r,
        &text,
        "`drift` in [rollout] is `repiar`, not one of: report, repair",
        text.find("\"repiar\"").unwrap(),
    );
    assert!(out.contains("did you mean `repair`?"), "{out}");
}
