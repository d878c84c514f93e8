//! Pack layouts: files, modes, keystores, evil entries on request, filler.

use super::support::*;

fn check_layout(kind: PackKind, version: &str, root: &Path, list_keystores: bool) {
    let layout = PackLayout::new(kind, version).expect("layout");
    let pack = build(kind, version, root);
    let top = &layout.top_dir;
    assert_eq!(pack.top_dir, *top);
    assert_eq!(pack.path, root.join(format!("{top}.zip")));
    let bytes = fs::read(&pack.path).expect("zip bytes");
    assert_eq!(pack.size, bytes.len() as u64);
    assert_eq!(pack.sha256, hex::encode(Sha256::digest(&bytes)));

    let names = zip_names(&pack);
    for (name, _, _) in &names {
        assert!(
            name.starts_with(&format!("{top}/")),
            "{name} outside {top}/"
        );
    }
    let mode_of = |rel: &str| {
        let full = format!("{top}/{rel}");
        names
            .iter()
            .find(|(n, _, _)| *n == full)
            .unwrap_or_else(|| panic!("{full} missing"))
            .1
            .expect("unix mode")
            & 0o777
    };
    for script in &layout.scripts {
        assert_eq!(mode_of(&format!("bin/{script}")), 0o755, "{script}");
    }
    let has_setup = names
        .iter()
        .any(|(n, _, _)| n.ends_with("/bin/profileSetup.sh"));
    assert_eq!(has_setup, layout.profile_setup, "{top} profileSetup.sh");
    if has_setup {
        assert_eq!(mode_of("bin/profileSetup.sh"), 0o755);
    }
    assert_eq!(mode_of("bin/version.txt"), 0o644);
    assert!(
        names
            .iter()
            .any(|(n, _, _)| n == &format!("{top}/repository/logs/"))
    );

    let home = unzip(&pack, &root.join("x"));
    assert_eq!(
        read(&home.join("bin/version.txt")).trim(),
        format!("{} v{version}", kind.product_name())
    );
    assert!(read(&home.join("repository/conf/deployment.toml")).contains("[super_admin]"));
    for t in &layout.templates {
        let tpl = home.join(format!(
            "repository/resources/conf/deployment-templates/{t}.toml"
        ));
        assert!(tpl.is_file(), "{}", tpl.display());
    }
    let webapps = home.join("repository/deployment/server/webapps");
    for war in &layout.wars {
        let f = webapps.join(war);
        let archive = zip::ZipArchive::new(fs::File::open(&f).expect("war")).expect("war is a zip");
        assert!(!archive.is_empty());
    }
    for dir in &layout.exploded_webapps {
        assert!(webapps.join(dir).join("WEB-INF/web.xml").is_file(), "{dir}");
    }
    let sec = home.join("repository/resources/security");
    for store in ["wso2carbon.jks", "client-truststore.jks"] {
        let bytes = fs::read(sec.join(store)).expect("store");
        assert_eq!(
            StoreFormat::detect(&bytes),
            Some(layout.store_format),
            "{top} {store}"
        );
    }
    if list_keystores {
        let trust = keytool_list(&sec.join("client-truststore.jks"));
        assert!(trust.contains("wso2carbon, "), "{trust}");
        assert!(trust.contains("gateway_certificate_alias, "), "{trust}");
        assert!(trust.contains("trustedCertEntry"), "{trust}");
        let ks = keytool_list(&sec.join("wso2carbon.jks"));
        assert!(
            ks.contains("wso2carbon, ") && ks.contains("PrivateKeyEntry"),
            "{ks}"
        );
    }
}

#[test]
fn all_in_one_packs_have_the_real_layout() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (v, list) in [
        ("3.2.0", true),
        ("4.0.0", false),
        ("4.1.0", false),
        ("4.2.0", false),
        ("4.3.0", false),
        ("4.4.0", true),
        ("4.5.0", false),
    ] {
        check_layout(PackKind::AllInOne, v, &tmp.path().join(v), list);
    }
    let l32 = PackLayout::new(PackKind::AllInOne, "3.2.0").expect("3.2");
    assert_eq!(l32.scripts, ["wso2server.sh"]);
    assert_eq!(l32.store_format, StoreFormat::Jks);
    let l44 = PackLayout::new(PackKind::AllInOne, "4.4.0").expect("4.4");
    assert_eq!(l44.scripts, ["api-manager.sh"]);
    assert_eq!(l44.store_format, StoreFormat::Pkcs12);
    assert!(
        !PackLayout::new(PackKind::AllInOne, "4.5.0")
            .expect("4.5")
            .profile_setup
    );
}

#[test]
fn split_4_5_packs_have_the_real_layout() {
    let tmp = tempfile::tempdir().expect("tmp");
    for kind in [
        PackKind::ApiControlPlane,
        PackKind::UniversalGateway,
        PackKind::TrafficManager,
    ] {
        check_layout(
            kind,
            "4.5.0",
            &tmp.path().join(kind.prefix()),
            kind == PackKind::UniversalGateway,
        );
    }
    let gw = PackLayout::new(PackKind::UniversalGateway, "4.5.0").expect("gw");
    assert_eq!(gw.top_dir, "wso2am-universal-gw-4.5.0");
    assert_eq!(gw.scripts, ["gateway.sh"]);
    let tm = PackLayout::new(PackKind::TrafficManager, "4.5.0").expect("tm");
    assert_eq!(tm.scripts, ["traffic-manager.sh"]);
}

#[test]
fn evil_entries_are_in_the_zip_as_requested() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = PackOptions {
        evil: EvilEntry::ALL.to_vec(),
        ..PackOptions::default()
    };
    let pack = build_pack(PackKind::AllInOne, "4.2.0", tmp.path(), &opts).expect("evil pack");
    let names = zip_names(&pack);
    let top = &pack.top_dir;
    assert!(
        names
            .iter()
            .any(|(n, _, _)| n == &format!("{top}/bin/api-manager.sh"))
    );
    assert!(
        names
            .iter()
            .any(|(n, _, _)| n == &format!("{top}/../../apim-evil-traversal.txt"))
    );
    assert!(
        names
            .iter()
            .any(|(n, _, _)| n == "/tmp/apim-evil-absolute.txt")
    );
    let mut archive = zip::ZipArchive::new(fs::File::open(&pack.path).expect("open")).expect("zip");
    for (name, target) in [
        (
            format!("{top}/repository/logs/escape"),
            "../../../../apim-evil-outside",
        ),
        (format!("{top}/repository/conf/link"), "/tmp"),
    ] {
        let mut f = archive.by_name(&name).expect("symlink entry");
        assert!(f.is_symlink(), "{name}");
        assert_eq!(f.unix_mode().expect("mode") & 0o170000, 0o120000);
        let mut content = String::new();
        std::io::Read::read_to_string(&mut f, &mut content).expect("target");
        assert_eq!(content, target);
    }
    assert!(names.iter().any(|(n, _, _)| n == &format!("{top}/repository/conf/link/apim-evil-through-link.txt")));
}

#[test]
fn filler_pads_a_pack_with_compressible_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let plain = build(PackKind::TrafficManager, "4.5.0", &tmp.path().join("plain"));
    let again = build(PackKind::TrafficManager, "4.5.0", &tmp.path().join("again"));
    assert_eq!(
        plain.sha256, again.sha256,
        "builds in one process are reproducible"
    );
    let opts = PackOptions {
        filler: Some(Filler {
            files: 50,
            bytes: 2_000_003,
        }),
        ..PackOptions::default()
    };
    let padded = build_pack(
        PackKind::TrafficManager,
        "4.5.0",
        &tmp.path().join("padded"),
        &opts,
    )
    .expect("padded");
    let mut archive =
        zip::ZipArchive::new(fs::File::open(&padded.path).expect("open")).expect("zip");
    let mut count = 0;
    let mut total = 0;
    for i in 0..archive.len() {
        let f = archive.by_index(i).expect("entry");
        if f.name()
            .expect("name")
            .contains("/repository/components/plugins/org.wso2.sim.filler.")
        {
            count += 1;
            total += f.size();
        }
    }
    assert_eq!(count, 50);
    assert_eq!(total, 2_000_003);
    let grown = padded.size - plain.size;
    assert!(grown < 1_000_000, "filler should compress: grew {grown}");
    assert!(
        grown > 100_000,
        "filler should not be trivial: grew {grown}"
    );
    let mode = fs::metadata(&padded.path)
        .expect("meta")
        .permissions()
        .mode();
    assert!(mode & 0o400 != 0);
}
