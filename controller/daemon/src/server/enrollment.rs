//! The `Enrollment` service: `Enroll` trades a one-time join token and a CSR for an agent
//! certificate; `Renew` issues a fresh certificate for the agent or operator of the presented
//! (valid) one; `Recover` issues one for an agent whose certificate expired, within the
//! recovery window, when that certificate is the newest the machine was issued.
//!
//! The identity in the certificate comes from the redeemed token (Enroll) or from the verified
//! client certificate (Renew, Recover), never from the request. A CSR that *names* another
//! identity is refused outright, as a sign of a confused or malicious client.

use apim_certs::{CertsError, IDENTITY_URI_PREFIX, IssuedCert, PeerIdentity};
use apim_proto::prost_types::Timestamp;
use apim_proto::v1::enrollment_server::Enrollment;
use apim_proto::v1::{EnrollRequest, EnrollResponse, RenewRequest, RenewResponse};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::Ctx;
use super::auth::caller;
use super::error::ServerError;

/// Largest CSR accepted (a P-256 CSR is about 300 bytes).
const MAX_CSR_BYTES: usize = 8 * 1024;

/// A protobuf timestamp for an X.509 time.
pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// Cheap checks before anything is redeemed or signed: size, DER shape, self-signature, and
/// that every name the CSR carries (CN, apimctl URI SANs) is `machine`'s.
pub fn precheck_csr(csr_der: &[u8], machine: &str) -> Result<(), ServerError> {
    precheck_csr_for(
        csr_der,
        &PeerIdentity::Agent {
            machine: machine.to_owned(),
        },
    )
}

/// [`precheck_csr`] for any identity (an operator renewing names itself).
fn precheck_csr_for(csr_der: &[u8], identity: &PeerIdentity) -> Result<(), ServerError> {
    let machine = match identity {
        PeerIdentity::Agent { machine } => machine.as_str(),
        PeerIdentity::Operator { name } => name.as_str(),
    };
    let refuse = |reason: String| ServerError::Csr { reason };
    if csr_der.is_empty() || csr_der.len() > MAX_CSR_BYTES {
        return Err(refuse(format!(
            "must be 1..={MAX_CSR_BYTES} bytes of DER, got {}",
            csr_der.len()
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| refuse(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(refuse("trailing bytes after the request".into()));
    }
    csr.verify_signature()
        .map_err(|e| refuse(format!("self-signature does not verify: {e}")))?;
    let foreign = |named: String, what: &str| ServerError::ForeignMachine {
        identity: identity.uri(),
        named,
        what: format!("CSR {what}"),
    };
    for cn in csr.certification_request_info.subject.iter_common_name() {
        let cn = cn.as_str().unwrap_or_default();
        if cn != machine {
            return Err(foreign(cn.to_owned(), "common name"));
        }
    }
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name
                        && uri.starts_with(IDENTITY_URI_PREFIX)
                        && *uri != identity.uri()
                    {
                        return Err(foreign((*uri).to_owned(), "URI SAN"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The `Enrollment` implementation.
#[derive(Debug, Clone)]
pub struct EnrollmentSvc {
    ctx: Ctx,
}

impl EnrollmentSvc {
    /// Issues certificates from `ctx.state`'s CA.
    pub(crate) fn new(ctx: Ctx) -> Self {
        EnrollmentSvc { ctx }
    }

    fn sign(&self, csr_der: &[u8], machine: &str) -> Result<IssuedCert, ServerError> {
        self.ctx
            .state
            .ca()
            .sign_agent_csr(csr_der, machine, self.ctx.config.agent_cert_ttl)
            .map_err(|source| match source {
                CertsError::CsrRejected { reason } => ServerError::Csr { reason },
                source => ServerError::Issue {
                    action: "signing an agent certificate",
                    source,
                },
            })
    }

    fn enroll_inner(&self, req: Request<EnrollRequest>) -> Result<EnrollResponse, ServerError> {
        let who = caller(&req)?.who();
        let EnrollRequest {
            token,
            machine,
            csr_der,
        } = req.into_inner();
        apim_certs::validate_name("machine", &machine).map_err(|e| {
            ServerError::InvalidArgument {
                field: "machine",
                reason: e.to_string(),
            }
        })?;
        precheck_csr(&csr_der, &machine)?;
        let machine = self.ctx.state.redeem_token(&token, &machine)?;
        let issued = self.sign(&csr_der, &machine)?;
        self.ctx.state.record_issued(&machine, &issued, true);
        tracing::info!(%machine, serial = %issued.serial, caller = %who, "agent enrolled");
        Ok(EnrollResponse {
            cert_chain_pem: issued.cert_pem,
            ca_pem: self.ctx.state.ca().cert_pem().to_owned(),
            not_after: Some(timestamp(issued.not_after)),
        })
    }

    fn renew_inner(&self, req: Request<RenewRequest>) -> Result<RenewResponse, ServerError> {
        let caller = caller(&req)?;
        let csr_der = &req.get_ref().csr_der;
        let identity = caller
            .peer
            .as_ref()
            .map(|p| p.identity.clone())
            .ok_or(ServerError::NoClientCert { rpc: caller.rpc })?;
        let issued = match &identity {
            PeerIdentity::Agent { machine } => {
                precheck_csr(csr_der, machine)?;
                let issued = self.sign(csr_der, machine)?;
                self.ctx.state.record_issued(machine, &issued, false);
                tracing::info!(%machine, serial = %issued.serial, not_after = %issued.not_after, "agent certificate renewed");
                issued
            }
            PeerIdentity::Operator { name } => {
                precheck_csr_for(csr_der, &identity)?;
                let issued = self
                    .ctx
                    .state
                    .ca()
                    .sign_operator_csr(csr_der, name, self.ctx.config.operator_cert_ttl)
                    .map_err(|source| match source {
                        CertsError::CsrRejected { reason } => ServerError::Csr { reason },
                        source => ServerError::Issue {
                            action: "signing an operator certificate",
                            source,
                        },
                    })?;
                tracing::info!(operator = %name, serial = %issued.serial, not_after = %issued.not_after, "operator certificate renewed");
                issued
            }
        };
        Ok(self.answer(issued))
    }

    fn recover_inner(&self, req: Request<RenewRequest>) -> Result<RenewResponse, ServerError> {
        let caller = caller(&req)?;
        let machine = caller.machine()?.to_owned();
        let presented = caller.peer.as_ref().map(|p| p.serial.clone());
        let newest = self.ctx.state.agent(&machine).and_then(|a| a.cert_serial);
        if presented.is_none() || presented != newest {
            return Err(ServerError::NotNewestCert { machine });
        }
        let csr_der = &req.get_ref().csr_der;
        precheck_csr(csr_der, &machine)?;
        let issued = self.sign(csr_der, &machine)?;
        self.ctx.state.record_issued(&machine, &issued, false);
        tracing::warn!(%machine, serial = %issued.serial, not_after = %issued.not_after, "agent certificate recovered after it expired");
        Ok(self.answer(issued))
    }

    fn answer(&self, issued: IssuedCert) -> RenewResponse {
        RenewResponse {
            cert_chain_pem: issued.cert_pem,
            ca_pem: self.ctx.state.ca().cert_pem().to_owned(),
            not_after: Some(timestamp(issued.not_after)),
        }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentSvc {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        Ok(Response::new(self.enroll_inner(req)?))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        Ok(Response::new(self.renew_inner(req)?))
    }

    async fn recover(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        Ok(Response::new(self.recover_inner(req)?))
    }
}
