//! `[gateway_artifacts]`: what 3.x gateways in HA share and how (the guide's step 6.5), its
//! errors with file:line:col, and that 4.x plans cannot have it.

use apim_plan::diag::Report;
use apim_plan::render::{ClusterRender, SharedHow};
use apim_testkit::plans::expect_error;

fn check(name: &str, extra: &str) -> (Option<ClusterRender>, Report, String) {
    super::example_with(name, &format!("\n{extra}"))
}

#[test]
fn v3_ha_gateways_synchronise_their_deployed_apis_by_default() {
    let (c, report, _) = check("v3-ha.toml", "");
    let c = c.unwrap_or_else(|| panic!("{}", report.render()));
    let shared: Vec<_> = ["gateway-1", "gateway-2"]
        .iter()
        .map(|n| c.node(n).unwrap().shared.clone().unwrap())
        .collect();
    assert_eq!(shared[0], shared[1], "one group, the same folders");
    assert!(shared[0].group.starts_with("gateway/"), "{:?}", shared[0]);
    let SharedHow::Sync { dirs } = &shared[0].how else {
        panic!("{:?}", shared[0]);
    };
    assert_eq!(
        dirs,
        &[
            "repository/deployment/server/synapse-configs",
            "repository/deployment/server/executionplans"
        ]
    );
    for n in ["km-1", "tm-1", "publisher-1", "devportal-1"] {
        assert!(c.node(n).unwrap().shared.is_none(), "{n} shares nothing");
    }
    // One gateway has no peer to share with.
    let (single, report, _) = check("v3-single.toml", "");
    let single = single.unwrap_or_else(|| panic!("{}", report.render()));
    assert!(single.nodes().all(|n| n.shared.is_none()));
}

#[test]
fn a_shared_file_system_is_mounted_over_the_whole_server_folder() {
    let (c, report, _) = check(
        "v3-ha.toml",
        "[gateway_artifacts]\nshare = \"mount\"\nsource = \"nfs.wso2.com:/exports/apim-gw\"\noptions = \"rw,hard\"\n",
    );
    let c = c.unwrap_or_else(|| panic!("{}", report.render()));
    let sh = c.node("gateway-2").unwrap().shared.clone().unwrap();
    assert_eq!(
        sh.how,
        SharedHow::Mount {
            dir: "repository/deployment/server".into(),
            source: "nfs.wso2.com:/exports/apim-gw".into(),
            fstype: "nfs".into(),
            options: "rw,hard".into(),
        }
    );
}

#[test]
fn bad_tables_are_named_where_they_are_written() {
    let (_, r, text) = check("v3-ha.toml", "[gateway_artifacts]\nshare = \"mount\"\n");
    expect_error(
        &r,
        &text,
        "[gateway_artifacts] is missing `source`",
        "[gateway_artifacts]",
    );
    let (_, r, text) = check(
        "v3-ha.toml",
        "[gateway_artifacts]\nshare = \"mount\"\nfstype = \"bind\"\nsource = \"mnt/gw\"\n",
    );
    expect_error(&r, &text, "`source` must be an absolute path", "\"mnt/gw\"");
    let (_, r, text) = check(
        "v3-ha.toml",
        "[gateway_artifacts]\nshare = \"mount\"\nsource = \"-oremount\"\n",
    );
    expect_error(&r, &text, "must not start with `-`", "\"-oremount\"");
    let (_, r, text) = check(
        "v3-ha.toml",
        "[gateway_artifacts]\nshare = \"sync\"\nsource = \"/mnt/gw\"\n",
    );
    expect_error(
        &r,
        &text,
        "applies to share = \"mount\" only",
        "\"/mnt/gw\"",
    );
    let (_, r, text) = check("v3-ha.toml", "[gateway_artifacts]\nshare = \"rsync\"\n");
    expect_error(&r, &text, "not one of: sync, mount", "\"rsync\"");
    let (_, r, text) = check("v45-ha.toml", "[gateway_artifacts]\nshare = \"sync\"\n");
    expect_error(
        &r,
        &text,
        "[gateway_artifacts] applies to 3.x only",
        "[gateway_artifacts]",
    );
}
