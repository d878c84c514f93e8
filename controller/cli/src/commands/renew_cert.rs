//! `apimctl renew-cert`: renews the operator's own certificate with the current one, before it
//! expires: a fresh key, a CSR naming the operator, `Enrollment.Renew`; the new key and
//! certificate replace the files the connection settings name (atomically, mode 0600).

use std::io::Write;
use std::path::Path;

use apim_certs::{AgentKey, PeerCert, PeerIdentity};
use apim_proto::v1::RenewRequest;
use apim_proto::v1::enrollment_client::EnrollmentClient;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::cli::Exit;
use crate::client::{ClientError, Settings};
use crate::error::CliError;

/// `apimctl renew-cert`.
#[derive(Debug, clap::Args)]
pub struct Args {}

fn bad(path: &Path, reason: impl Into<String>) -> CliError {
    CliError::Client(ClientError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    })
}

/// Runs `apimctl renew-cert`.
pub async fn run(
    _args: Args,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let (cert_path, key_path) = settings.identity_files()?;
    let pem = std::fs::read(&cert_path).map_err(CliError::io(&cert_path))?;
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| bad(&cert_path, e.to_string()))?;
    let current = PeerCert::from_der(&der).map_err(|e| bad(&cert_path, e.to_string()))?;
    let PeerIdentity::Operator { name } = &current.identity else {
        return Err(bad(&cert_path, "not an operator certificate"));
    };
    if time::OffsetDateTime::now_utc() > current.not_after {
        return Err(bad(
            &cert_path,
            format!(
                "expired at {}; renewing needs a valid certificate: on the controller host, \
                 `apimctl controller operator-cert --name {name} --out DIR`",
                current.not_after
            ),
        ));
    }
    let key = AgentKey::generate().map_err(|e| bad(&key_path, e.to_string()))?;
    let csr_der = key
        .csr_der_for(&current.identity)
        .map_err(|e| bad(&key_path, e.to_string()))?;
    let answer = EnrollmentClient::new(settings.connect().await?)
        .renew(RenewRequest { csr_der })
        .await?
        .into_inner();
    // The key first: until the certificate follows, the old pair is still on disk as the
    // certificate file says.
    let write = |path: &Path, text: &str| {
        apim_atomic::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|e| CliError::io(path)(e.into()))
    };
    write(&key_path, &key.key_pem())?;
    write(&cert_path, &answer.cert_chain_pem)?;
    let renewed = CertificateDer::from_pem_slice(answer.cert_chain_pem.as_bytes())
        .ok()
        .and_then(|d| PeerCert::from_der(&d).ok());
    let until = renewed.map_or("?".into(), |p| p.not_after.to_string());
    let _ = writeln!(
        stdout,
        "renewed the certificate of operator {name} (valid until {until}): {} and {}",
        cert_path.display(),
        key_path.display()
    );
    Ok(Exit::Success)
}
