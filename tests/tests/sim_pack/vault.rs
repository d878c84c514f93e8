//! The secure vault as the real product runs it: `ciphertool.sh -Dconfigure` encrypts
//! `[secrets]` with the primary keystore's certificate (RSA-OAEP, SHA-1, MGF1-SHA-1, base64) and
//! writes secret-conf.properties; the server takes the keystore password from `password-tmp`
//! (deleting it) or `password-persist`, decrypts with the private key, and resolves a secret it
//! cannot decrypt to the alias itself.

use super::support::*;
use base64::Engine as _;

const ADMIN_PASSWORD: &str = "Adm1n-vault-Pass";

/// The pack's toml with the admin and TLS keystore passwords taken from the vault.
fn vault_toml(base: &str, admin_secret: &str, keystore_secret: &str) -> String {
    let base = base
        .replace("password = \"admin\"", "password = \"$secret{admin_password}\"")
        .replace(
            "[keystore.tls]\nfile_name = \"wso2carbon.jks\"\ntype = \"JKS\"\npassword = \"wso2carbon\"\nalias = \"wso2carbon\"\nkey_password = \"wso2carbon\"",
            "[keystore.tls]\nfile_name = \"wso2carbon.jks\"\ntype = \"JKS\"\npassword = \"$secret{keystore_password}\"\nalias = \"wso2carbon\"\nkey_password = \"$secret{keystore_password}\"",
        );
    assert!(
        base.contains("$secret{admin_password}") && base.contains("$secret{keystore_password}")
    );
    format!(
        "{base}\n[secrets]\nadmin_password = \"{admin_secret}\"\nkeystore_password = \"{keystore_secret}\"\n"
    )
}

fn secrets_of(home: &Path) -> toml::Table {
    let doc: toml::Table = read(&home.join("repository/conf/deployment.toml"))
        .parse()
        .expect("toml after ciphertool");
    doc["secrets"].as_table().expect("[secrets]").clone()
}

/// Decrypts `b64` with openssl and the keystore's private key (an independent check of the
/// OAEP parameters), when openssl is installed.
fn openssl_decrypt(store: &Path, b64: &str, dir: &Path) -> Option<String> {
    let keytool = apim_e2e::simpack::find_keytool()?;
    Command::new("openssl").arg("version").output().ok()?;
    let p12 = dir.join("key.p12");
    let _ = fs::remove_file(&p12);
    let out = Command::new(keytool)
        .args(["-importkeystore", "-srckeystore"])
        .arg(store)
        .args(["-srcstorepass:env", "P", "-destkeystore"])
        .arg(&p12)
        .args(["-deststoretype", "PKCS12", "-deststorepass:env", "P"])
        .env("P", "wso2carbon")
        .output()
        .ok()?;
    assert!(out.status.success(), "{}", stderr(&out));
    let pem = dir.join("key.pem");
    let out = Command::new("openssl")
        .args(["pkcs12", "-in"])
        .arg(&p12)
        .args(["-nocerts", "-nodes", "-passin", "pass:wso2carbon", "-out"])
        .arg(&pem)
        .output()
        .ok()?;
    assert!(out.status.success(), "{}", stderr(&out));
    let cipher = dir.join("secret.bin");
    fs::write(
        &cipher,
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("b64"),
    )
    .expect("write");
    let out = Command::new("openssl")
        .args(["pkeyutl", "-decrypt", "-inkey"])
        .arg(&pem)
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha1",
        ])
        .args(["-pkeyopt", "rsa_mgf1_md:sha1", "-in"])
        .arg(&cipher)
        .output()
        .ok()?;
    assert!(out.status.success(), "openssl: {}", stderr(&out));
    Some(stdout(&out))
}

#[test]
fn ciphertool_encrypts_secrets_and_the_server_decrypts_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("vault_round_trip", 1);
    let m = machine(tmp.path(), "vm-vault", ip, &[]);
    let pack = build(PackKind::AllInOne, "4.2.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let base = read(&home.join("repository/conf/deployment.toml"));
    write_toml(
        &home,
        &vault_toml(&base, &format!("[{ADMIN_PASSWORD}]"), "[wso2carbon]"),
    );

    // No password and no console: the tool cannot read one.
    let out = ciphertool(&home, &["-Dconfigure"], &m.jdk.home);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("CipherToolException: String cannot be null"),
        "{}",
        stderr(&out)
    );
    let out = ciphertool(&home, &["-Dconfigure", "-Dpassword=wrong"], &m.jdk.home);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("I/O error occurred while reading the KeyStore"),
        "{}",
        stderr(&out)
    );
    let out = ciphertool(&home, &["-Dconfigure", "-Dnope"], &m.jdk.home);
    assert_eq!(out.status.code(), Some(255));
    assert!(stdout(&out).contains("This option is not defined!"));

    let out = ciphertool(
        &home,
        &["-Dconfigure", "-Dpassword=wso2carbon"],
        &m.jdk.home,
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for line in [
        "Encrypting using Primary KeyStore.",
        "{type: JKS, alias: wso2carbon, path: ",
        "Primary KeyStore of Carbon Server is initialized Successfully",
        "Encryption is done Successfully",
        "Secret Configurations are written to the property file successfully",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let secrets = secrets_of(&home);
    let admin = secrets["admin_password"]
        .as_str()
        .expect("admin")
        .to_string();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&admin)
        .expect("base64 value");
    assert_eq!(raw.len(), 256, "one RSA-2048 block");
    assert!(read(&home.join("repository/conf/deployment.toml")).contains("admin_password  = \""));
    let store = home.join("repository/resources/security/wso2carbon.jks");
    if let Some(plain) = openssl_decrypt(&store, &admin, tmp.path()) {
        assert_eq!(plain, ADMIN_PASSWORD, "RSA-OAEP with SHA-1 and MGF1-SHA-1");
    }
    let conf = read(&home.join("repository/conf/security/secret-conf.properties"));
    for line in [
        "secVault.enabled=true",
        "secretRepositories=file",
        &format!("keystore.identity.location={}", store.display()),
        "keystore.identity.type=JKS",
        "keystore.identity.alias=wso2carbon",
        "keystore.identity.store.password=identity.store.password",
        "keystore.identity.key.secretProvider=org.wso2.carbon.securevault.DefaultSecretCallbackHandler",
    ] {
        assert!(conf.lines().any(|l| l == line), "{line}: {conf}");
    }
    // A second run leaves encrypted values alone.
    assert!(
        ciphertool(
            &home,
            &["-Dconfigure", "-Dpassword=wso2carbon"],
            &m.jdk.home
        )
        .status
        .success()
    );
    assert_eq!(
        secrets_of(&home)["admin_password"].as_str(),
        Some(admin.as_str())
    );

    // password-tmp: read, then deleted; the admin logs in with the decrypted password.
    fs::write(home.join("password-tmp"), "wso2carbon\n").expect("password-tmp");
    assert!(
        sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(
        wait_log(&home, "WSO2 Carbon started in"),
        "{}",
        log_text(&home)
    );
    assert!(
        !home.join("password-tmp").exists(),
        "password-tmp is deleted"
    );
    let me = "/api/identity/user/v1.0/me";
    assert_eq!(
        https_get_basic(addr(ip, 9443), "localhost", me, "admin", ADMIN_PASSWORD),
        200
    );
    assert_eq!(
        https_get_basic(addr(ip, 9443), "localhost", me, "admin", "admin"),
        401
    );
    stop_node(&home, "api-manager.sh", &m.jdk.home);

    // password-persist stays.
    fs::write(home.join("password-persist"), "wso2carbon\n").expect("password-persist");
    assert!(
        sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 2));
    assert!(home.join("password-persist").exists());
    assert_eq!(
        https_get_basic(addr(ip, 9443), "localhost", me, "admin", ADMIN_PASSWORD),
        200
    );
    stop_node(&home, "api-manager.sh", &m.jdk.home);
    fs::remove_file(home.join("password-persist")).expect("rm");

    // No password file and no console (daemon mode): the vault stays shut, every secret
    // resolves to its alias, and the TLS keystore does not open with "keystore_password".
    assert!(
        sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(
        wait_log(
            &home,
            "Keystore was tampered with, or password was incorrect"
        ),
        "{}",
        log_text(&home)
    );
    let pid = pid_of(&home).expect("pid");
    assert!(
        wait_until(TIMEOUT, POLL, || !alive(pid)),
        "the server exits"
    );
    assert_eq!(log_text(&home).matches("WSO2 Carbon started in").count(), 2);
}

#[test]
fn a_secret_encrypted_the_wrong_way_resolves_to_its_alias() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("vault_wrong_padding", 1);
    let m = machine(tmp.path(), "vm-vault2", ip, &[]);
    // 4.4: PKCS12 bytes behind the .jks name the toml calls JKS.
    let pack = build(PackKind::AllInOne, "4.4.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let base = read(&home.join("repository/conf/deployment.toml"));
    // The admin password with PKCS#1 v1.5 instead of the OAEP the server decrypts with (a value
    // without brackets is left alone), then the keystore password the right way.
    write_toml(
        &home,
        &vault_toml(&base, &format!("[{ADMIN_PASSWORD}]"), "later"),
    );
    let out = ciphertool(
        &home,
        &[
            "-Dconfigure",
            "-Dpassword=wso2carbon",
            "-Dorg.wso2.CipherTransformation=RSA",
        ],
        &m.jdk.home,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(&home, &toml.replace("\"later\"", "\"[wso2carbon]\""));
    let out = ciphertool(
        &home,
        &["-Dconfigure", "-Dpassword=wso2carbon"],
        &m.jdk.home,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    fs::write(home.join("password-persist"), "wso2carbon\n").expect("password-persist");
    assert!(
        sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(
        wait_log(&home, "WSO2 Carbon started in"),
        "{}",
        log_text(&home)
    );
    let log = log_text(&home);
    assert!(
        log.contains("WARN {org.wso2.securevault.secret.repository.FileBaseSecretRepository} - Error decrypting secret for the alias : admin_password"),
        "{log}"
    );
    let me = "/api/identity/user/v1.0/me";
    assert_eq!(
        https_get_basic(addr(ip, 9443), "localhost", me, "admin", ADMIN_PASSWORD),
        401
    );
    assert_eq!(
        https_get_basic(addr(ip, 9443), "localhost", me, "admin", "admin_password"),
        200,
        "the secret manager returns the alias itself"
    );
    stop_node(&home, "api-manager.sh", &m.jdk.home);
}
