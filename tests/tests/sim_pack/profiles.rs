//! `profileSetup.sh` as the real one behaves: its profiles, side effects and failures.

use super::support::*;

#[test]
fn profile_setup_3_2_gateway_worker_and_bad_profiles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pack = build(PackKind::AllInOne, "3.2.0", tmp.path());

    let home = unzip(&pack, &tmp.path().join("good"));
    let original = read(&home.join("repository/conf/deployment.toml"));
    // run from elsewhere: the script cds to its own directory
    let out = sh(
        &home,
        "profileSetup.sh",
        &["-Dprofile=gateway-worker"],
        None,
    );
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("Starting to optimize API Manager for the Gateway worker profile"),
        "{text}"
    );
    assert!(
        text.contains(
            "Renamed the existing ../repository/conf/deployment.toml file as deployment.toml.backup"
        ),
        "{text}"
    );
    assert!(text.contains("INFO - Finished the optimizations"), "{text}");
    let stamped = text
        .lines()
        .filter(|l| l.starts_with("[20") && l.contains("] INFO - "))
        .count();
    assert!(stamped >= 5, "{text}");
    assert_eq!(
        read(&home.join("repository/conf/deployment.toml.backup")),
        original
    );
    assert!(
        read(&home.join("repository/conf/deployment.toml"))
            .contains("server_role = \"gateway-worker\"")
    );
    let webapps: Vec<String> = fs::read_dir(home.join("repository/deployment/server/webapps"))
        .expect("webapps")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(webapps, ["am#sample#pizzashack#v1.war"]);
    let jaggery =
        fs::read_dir(home.join("repository/deployment/server/jaggeryapps")).expect("jaggery");
    assert_eq!(jaggery.count(), 0);
    let t = home.join("repository/resources/conf/templates/repository");
    assert!(
        !t.join("deployment/server/webapps/authenticationendpoint/WEB-INF/web.xml.j2")
            .exists()
    );
    assert!(read(&t.join("conf/tomcat/carbon/WEB-INF/web.xml.j2")).contains("web_TM_GW"));

    // An unknown profile, and a valid profile that is not $1: message, exit 0, nothing touched.
    for args in [
        vec!["-Dprofile=control-plane"],
        vec!["--skipConfigOptimization", "-Dprofile=gateway-worker"],
        vec![],
    ] {
        let home = unzip(&pack, &tmp.path().join(format!("bad{}", args.len())));
        let out = sh(&home, "profileSetup.sh", &args, None);
        assert!(out.status.success(), "{args:?}");
        let text = stdout(&out);
        assert!(
            text.contains("Profile is not specified properly, please try again"),
            "{text}"
        );
        assert!(!text.contains("Finished the optimizations"), "{text}");
        assert_eq!(
            read(&home.join("repository/conf/deployment.toml")),
            original
        );
        assert!(!home.join("repository/conf/deployment.toml.backup").exists());
        fs::remove_dir_all(home.parent().expect("parent")).expect("cleanup");
    }
}

#[test]
fn profile_setup_4_x_skip_config_and_non_idempotency() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pack = build(PackKind::AllInOne, "4.2.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("cp"));
    let conf = home.join("repository/conf");
    let axis2 = home.join("repository/resources/conf/templates/repository/conf/axis2");
    let webapps = home.join("repository/deployment/server/webapps");
    let original_axis2 = read(&axis2.join("axis2.xml.j2"));
    let edited = "# operator's config\n[server]\nhostname = \"cp.wso2.com\"\n";
    write_toml(&home, edited);

    let out = sh(
        &home,
        "profileSetup.sh",
        &["-Dprofile=control-plane", "--skipConfigOptimization"],
        None,
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("Finished the optimizations"));
    assert_eq!(
        read(&conf.join("deployment.toml")),
        edited,
        "skip keeps the toml"
    );
    assert!(!conf.join("deployment.toml.backup").exists());
    assert!(!webapps.join("api#am#gateway#v2.war").exists());
    assert!(webapps.join("api#am#publisher.war").exists());
    assert!(webapps.join("publisher").is_dir());
    assert!(read(&axis2.join("axis2.xml.j2")).contains("axis2_ControlPlane"));
    assert_eq!(read(&axis2.join("axis2.xml.j2.backup")), original_axis2);
    let inbound = home.join("repository/deployment/server/synapse-configs/default");
    assert!(inbound.join("synapse.xml").exists());
    assert!(!inbound.join("inbound-endpoints").exists());

    // 4.1+: mv then cp, so a second run backs up the swapped template: the original is lost.
    let out = sh(
        &home,
        "profileSetup.sh",
        &["-Dprofile=control-plane", "skipConfigOptimization"],
        None,
    );
    assert!(out.status.success());
    assert!(read(&axis2.join("axis2.xml.j2.backup")).contains("axis2_ControlPlane"));

    // Without skip the toml is replaced; a second run backs up the template over the user's file.
    let out = sh(&home, "profileSetup.sh", &["-Dprofile=control-plane"], None);
    assert!(out.status.success());
    assert_eq!(read(&conf.join("deployment.toml.backup")), edited);
    let template =
        read(&home.join("repository/resources/conf/deployment-templates/control-plane.toml"));
    assert_eq!(read(&conf.join("deployment.toml")), template);
    let out = sh(&home, "profileSetup.sh", &["-Dprofile=control-plane"], None);
    assert!(out.status.success());
    assert_eq!(
        read(&conf.join("deployment.toml.backup")),
        template,
        "the user's edits are gone"
    );

    // 3.2–4.0: the swap is a mv; a second run finds no _TM template and leaves the backup alone.
    let pack40 = build(PackKind::AllInOne, "4.0.0", &tmp.path().join("p40"));
    let home40 = unzip(&pack40, &tmp.path().join("tm40"));
    let axis2_40 = home40.join("repository/resources/conf/templates/repository/conf/axis2");
    let original40 = read(&axis2_40.join("axis2.xml.j2"));
    for _ in 0..2 {
        let out = sh(
            &home40,
            "profileSetup.sh",
            &["-Dprofile=traffic-manager"],
            None,
        );
        assert!(out.status.success());
    }
    assert!(!axis2_40.join("axis2_TM.xml.j2").exists());
    assert!(read(&axis2_40.join("axis2.xml.j2")).contains("axis2_TM"));
    assert_eq!(read(&axis2_40.join("axis2.xml.j2.backup")), original40);
    let left: Vec<String> = fs::read_dir(home40.join("repository/deployment/server/webapps"))
        .expect("webapps")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["internal#data#v1.war"]);
    let syn: Vec<String> =
        fs::read_dir(home40.join("repository/deployment/server/synapse-configs/default"))
            .expect("synapse")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(syn, ["synapse.xml"]);
}

#[test]
fn profile_setup_acp_accepts_only_key_manager() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pack = build(PackKind::ApiControlPlane, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("a"));
    let out = sh(&home, "profileSetup.sh", &["-Dprofile=control-plane"], None);
    assert!(out.status.success());
    assert!(stdout(&out).contains("Profile is not specified properly, please try again"));

    let out = sh(&home, "profileSetup.sh", &["-Dprofile=key-manager"], None);
    assert!(out.status.success());
    assert!(stdout(&out).contains("Finished the optimizations"));
    let toml = read(&home.join("repository/conf/deployment.toml"));
    assert!(
        toml.contains("server_role = \"default\""),
        "4.5 ACP key-manager.toml oddity"
    );
    let webapps = home.join("repository/deployment/server/webapps");
    assert!(webapps.join("keymanager-operations.war").exists());
    assert!(webapps.join("oauth2.war").exists());
    assert!(webapps.join("authenticationendpoint").is_dir());
    assert!(!webapps.join("api#am#publisher.war").exists());
    assert!(!webapps.join("publisher").exists());
    // the ACP key manager keeps the synapse configs
    assert!(
        home.join("repository/deployment/server/synapse-configs/default/api")
            .is_dir()
    );
    assert!(
        !home
            .join("repository/conf/axis2/axis2_blocking_client.xml")
            .exists()
    );
}
