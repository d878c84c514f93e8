//! Join tokens: shape, single use, expiry, host binding, unknown ids, tampering, CA pinning.

use std::time::Duration;

use apim_certs::{
    CertsError, ControlPlaneCa, DEFAULT_TOKEN_TTL, JoinToken, ParsedToken, TokenRecord,
    TokenRegistry, verify_ca_pin,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn minted(machine: &str) -> (TokenRegistry, String, TokenRecord) {
    let (token, record) = JoinToken::mint_at(machine, DEFAULT_TOKEN_TTL, FP, t0()).unwrap();
    let mut reg = TokenRegistry::new();
    reg.insert(record.clone()).unwrap();
    (reg, token.expose().to_owned(), record)
}

#[test]
fn token_string_carries_id_secret_and_pin_but_record_keeps_only_a_hash() {
    let (_reg, token, record) = minted("vm-gw-1");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 4, "{}", parts.len());
    assert_eq!(parts[0], "apimctl1");
    let parsed = ParsedToken::parse(&format!("  {token}\n")).unwrap();
    assert_eq!(parsed.id, record.id);
    assert_eq!(parsed.ca_fingerprint, FP);
    assert_eq!(parts[2], parsed.secret);
    assert_eq!(record.machine, "vm-gw-1");
    assert_eq!(
        record.secret_sha256,
        hex::encode(Sha256::digest(parsed.secret.as_bytes()))
    );
    assert_eq!(record.expires_at, t0() + time::Duration::hours(1));
    assert!(!record.used);

    // Nothing persisted or logged contains the secret.
    let json = serde_json::to_string(&record).unwrap();
    assert!(!json.contains(&parsed.secret));
    assert!(!format!("{parsed:?}").contains(&parsed.secret));
    let (jt, _) = JoinToken::mint_at("vm-gw-1", DEFAULT_TOKEN_TTL, FP, t0()).unwrap();
    assert_eq!(format!("{jt:?}"), "JoinToken(<redacted>)");

    // Two mints never collide.
    let (other, _) = JoinToken::mint_at("vm-gw-1", DEFAULT_TOKEN_TTL, FP, t0()).unwrap();
    assert_ne!(other.expose(), token);
}

#[test]
fn token_is_single_use() {
    let (mut reg, token, _) = minted("vm-km");
    assert_eq!(reg.redeem(&token, t0()).unwrap(), "vm-km");
    let err = reg.redeem(&token, t0()).unwrap_err();
    assert!(matches!(err, CertsError::TokenAlreadyUsed { .. }), "{err}");
    let rec = reg.records().next().unwrap();
    assert!(rec.used);
    assert_eq!(rec.used_at, Some(t0()));
}

#[test]
fn token_expires() {
    let (mut reg, token, record) = minted("vm-km");
    let err = reg.redeem(&token, record.expires_at).unwrap_err();
    assert!(
        matches!(&err, CertsError::TokenExpired { expired_at, .. } if *expired_at == record.expires_at),
        "{err}"
    );
    let err = reg
        .redeem(&token, record.expires_at + time::Duration::days(1))
        .unwrap_err();
    assert!(matches!(err, CertsError::TokenExpired { .. }));
    // One second before expiry it still works.
    assert_eq!(
        reg.redeem(&token, record.expires_at - time::Duration::seconds(1))
            .unwrap(),
        "vm-km"
    );
}

#[test]
fn token_is_bound_to_its_machine() {
    let (mut reg, token, _) = minted("vm-gw-1");
    let err = reg.redeem_for(&token, "vm-gw-2", t0()).unwrap_err();
    assert!(
        matches!(&err, CertsError::TokenMachineMismatch { expected, claimed, .. }
            if expected == "vm-gw-1" && claimed == "vm-gw-2"),
        "{err}"
    );
    // The refusal did not burn the token: the right agent still enrolls.
    assert_eq!(reg.redeem_for(&token, "vm-gw-1", t0()).unwrap(), "vm-gw-1");
}

#[test]
fn unknown_token_id_is_refused() {
    let (mut reg, _token, _) = minted("vm-1");
    let (stray, _) = JoinToken::mint_at("vm-1", DEFAULT_TOKEN_TTL, FP, t0()).unwrap();
    let err = reg.redeem(stray.expose(), t0()).unwrap_err();
    assert!(matches!(err, CertsError::UnknownToken { .. }), "{err}");
}

#[test]
fn tampered_secret_is_refused_and_does_not_burn_the_token() {
    let (mut reg, token, _) = minted("vm-1");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let secret = parts[2].clone();
    // Change one character, keeping valid base64url of the same length.
    let first = secret.chars().next().unwrap();
    let swapped = if first == 'A' { 'B' } else { 'A' };
    parts[2] = format!("{swapped}{}", &secret[1..]);
    let forged = parts.join(".");
    let err = reg.redeem(&forged, t0()).unwrap_err();
    assert!(
        matches!(err, CertsError::TokenSecretMismatch { .. }),
        "{err}"
    );
    assert!(
        !err.to_string().contains(&parts[2]),
        "error echoes the secret"
    );
    assert_eq!(reg.redeem(&token, t0()).unwrap(), "vm-1");
}

#[test]
fn malformed_tokens_are_refused_without_echoing_them() {
    let (_reg, token, _) = minted("vm-1");
    let secret = token.split('.').nth(2).unwrap().to_owned();
    let cases = [
        String::new(),
        "apimctl1".into(),
        token.replacen("apimctl1", "apimctl2", 1),
        format!("{token}.extra"),
        token.replacen(&secret, "short", 1),
        token.replacen(FP, "abcd", 1),
    ];
    for bad in cases {
        let mut reg = TokenRegistry::new();
        let err = reg.redeem(&bad, t0()).unwrap_err();
        assert!(
            matches!(err, CertsError::MalformedToken { .. }),
            "{bad:?}: {err}"
        );
        assert!(!err.to_string().contains(&secret));
    }
}

#[test]
fn registry_round_trips_through_serde_with_used_flags() {
    let (mut reg, token, _) = minted("vm-1");
    let (token2, rec2) = JoinToken::mint_at("vm-2", Duration::from_secs(600), FP, t0()).unwrap();
    reg.insert(rec2.clone()).unwrap();
    assert!(matches!(
        reg.insert(rec2),
        Err(CertsError::DuplicateToken { .. })
    ));
    reg.redeem(&token, t0()).unwrap();

    let json = serde_json::to_string(&reg).unwrap();
    let mut back: TokenRegistry = serde_json::from_str(&json).unwrap();
    assert_eq!(back, reg);
    assert!(matches!(
        back.redeem(&token, t0()),
        Err(CertsError::TokenAlreadyUsed { .. })
    ));
    // Pruning drops the used one and, later, the expired one.
    assert_eq!(back.prune(t0()), 1);
    assert_eq!(back.prune(t0() + time::Duration::minutes(11)), 1);
    assert!(matches!(
        back.redeem(token2.expose(), t0()),
        Err(CertsError::UnknownToken { .. })
    ));
}

#[test]
fn mint_validates_inputs() {
    assert!(matches!(
        JoinToken::mint("vm/../x", DEFAULT_TOKEN_TTL, FP),
        Err(CertsError::InvalidName { .. })
    ));
    assert!(JoinToken::mint("vm-1", DEFAULT_TOKEN_TTL, "not-a-fingerprint").is_err());
    assert!(matches!(
        JoinToken::mint("vm-1", Duration::ZERO, FP),
        Err(CertsError::InvalidValidity { .. })
    ));
    let (tok, rec) = JoinToken::mint("vm-1", DEFAULT_TOKEN_TTL, &FP.to_uppercase()).unwrap();
    assert!(tok.expose().ends_with(FP));
    assert!(rec.expires_at > OffsetDateTime::now_utc());
}

#[test]
fn ca_pin_accepts_the_right_ca_and_refuses_another() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ControlPlaneCa::load_or_create(&tmp.path().join("a")).unwrap();
    let rogue = ControlPlaneCa::load_or_create(&tmp.path().join("b")).unwrap();
    let (token, _) = JoinToken::mint("vm-1", DEFAULT_TOKEN_TTL, ca.fingerprint()).unwrap();
    let parsed = ParsedToken::parse(token.expose()).unwrap();

    verify_ca_pin(ca.cert_pem(), &parsed.ca_fingerprint).unwrap();
    // openssl-style colon/uppercase fingerprints are accepted too.
    let colon: Vec<String> = ca
        .fingerprint()
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    verify_ca_pin(ca.cert_pem(), &colon.join(":")).unwrap();

    let err = verify_ca_pin(rogue.cert_pem(), &parsed.ca_fingerprint).unwrap_err();
    assert!(
        matches!(&err, CertsError::CaPinMismatch { expected, actual }
            if expected == ca.fingerprint() && actual == rogue.fingerprint()),
        "{err}"
    );
    assert!(verify_ca_pin("not pem", &parsed.ca_fingerprint).is_err());
}
