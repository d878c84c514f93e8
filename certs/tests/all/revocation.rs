//! Revocation by machine, operator and serial.

use apim_certs::{
    AgentKey, ControlPlaneCa, DEFAULT_AGENT_CERT_TTL, PeerCert, PeerIdentity, RevocationList,
};

#[test]
fn revocation_by_machine_operator_and_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ControlPlaneCa::load_or_create(&tmp.path().join("ca")).unwrap();
    let key = AgentKey::generate().unwrap();
    let csr = key.csr_der("vm-1").unwrap();
    let old = PeerCert::from_der(
        &ca.sign_agent_csr(&csr, "vm-1", DEFAULT_AGENT_CERT_TTL)
            .unwrap()
            .cert_der,
    )
    .unwrap();
    let new = PeerCert::from_der(
        &ca.sign_agent_csr(&csr, "vm-1", DEFAULT_AGENT_CERT_TTL)
            .unwrap()
            .cert_der,
    )
    .unwrap();
    let other = PeerIdentity::agent("vm-2").unwrap();

    let mut rl = RevocationList::new();
    assert!(!rl.is_revoked(&old.identity, &old.serial));

    // One certificate, typed the way openssl prints serials (uppercase, colons).
    let typed: Vec<String> = old
        .serial
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    assert!(rl.revoke_serial(&typed.join(":")));
    assert!(!rl.revoke_serial(&old.serial), "same serial twice");
    assert!(rl.is_revoked(&old.identity, &old.serial));
    assert!(
        !rl.is_revoked(&new.identity, &new.serial),
        "renewed cert is not hit"
    );

    // The whole machine.
    assert!(rl.revoke_machine("vm-1").unwrap());
    assert!(rl.is_revoked(&new.identity, &new.serial));
    assert!(rl.is_machine_revoked("vm-1"));
    assert!(!rl.is_revoked(&other, "01"));

    // Operators are separate from machines of the same name.
    rl.revoke_operator("vm-2").unwrap();
    assert!(!rl.is_revoked(&other, "01"));
    assert!(rl.is_revoked(&PeerIdentity::operator("vm-2").unwrap(), "01"));
    assert!(rl.revoke_machine("bad/name").is_err());

    // Survives the store.
    let json = serde_json::to_string(&rl).unwrap();
    let mut back: RevocationList = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rl);

    // A rebuilt VM is reinstated; its old certificate stays dead.
    assert!(back.reinstate(&new.identity));
    assert!(!back.is_revoked(&new.identity, &new.serial));
    assert!(back.is_revoked(&old.identity, &old.serial));
}
