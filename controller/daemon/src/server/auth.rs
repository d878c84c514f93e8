//! Authorization in one place: [`AuthService`] wraps every route, maps the HTTP/2 path to an
//! [`Rpc`], verifies the caller's certificate (chain to the control-plane CA, validity now,
//! clientAuth), reads its identity, checks the revocation list and the RPC's [`Access`] rule,
//! and only then lets the call through with a [`Caller`] in the request extensions.
//!
//! Unknown paths are refused before any handler runs (deny by default). Handlers read the
//! caller with [`caller`], which fails closed if the layer did not run.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use apim_certs::{PeerCert, PeerIdentity};
use futures::future::BoxFuture;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::error::ServerError;
use crate::state::ControllerState;

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a certificate (only `Enrollment.Enroll`: the join token decides).
    /// A certificate that *is* presented must still be valid and not revoked.
    Anyone,
    /// An enrolled agent (`spiffe://apimctl/agent/<machine>`).
    Agent,
    /// An operator (`spiffe://apimctl/operator/<name>`).
    Operator,
    /// Either (`ArtifactService.Stat`: agents before a fetch, `apimctl apply` before an upload;
    /// `Enrollment.Renew`: agents and operators renew their own certificates).
    AgentOrOperator,
    /// An agent whose certificate may have EXPIRED, within the recovery window after its
    /// not_after (only `Enrollment.Recover`); everything else about the certificate is checked
    /// as usual.
    RecoveringAgent,
    /// Anyone, with or without a certificate: the `grpc.health.v1.Health` probe of load
    /// balancers, which only ever learns SERVING or NOT_SERVING. As with [`Access::Anyone`], a
    /// certificate that *is* presented must be valid and not revoked.
    Probe,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Anyone => "anyone",
            Access::Agent => "agent certificates",
            Access::Operator => "operator certificates",
            Access::AgentOrOperator => "agent or operator certificates",
            Access::RecoveringAgent => "agent certificates, expired within the recovery window",
            Access::Probe => "anyone (health probes)",
        })
    }
}

/// Every RPC of `apimctl.v1`, so the access rule of each is written down exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `Enrollment.Enroll`.
    Enroll,
    /// `Enrollment.Renew`.
    Renew,
    /// `Enrollment.Recover`.
    Recover,
    /// `AgentService.Connect`.
    Connect,
    /// `ArtifactService.Fetch`.
    Fetch,
    /// `ArtifactService.Stat`.
    Stat,
    /// `ArtifactService.Upload`.
    Upload,
    /// `OperatorService.Apply`.
    Apply,
    /// `OperatorService.Plan`.
    Plan,
    /// `OperatorService.Status`.
    Status,
    /// `OperatorService.Watch`.
    Watch,
    /// `OperatorService.CreateToken`.
    CreateToken,
    /// `OperatorService.ListAgents`.
    ListAgents,
    /// `OperatorService.Revoke`.
    Revoke,
    /// `OperatorService.AbortRollout`.
    AbortRollout,
    /// `OperatorService.History`.
    History,
    /// `OperatorService.Rollback`.
    Rollback,
    /// `OperatorService.OperateNodes`.
    OperateNodes,
    /// `OperatorService.Diff`.
    Diff,
    /// `OperatorService.ListArtifacts`.
    ListArtifacts,
    /// `OperatorService.PruneArtifacts`.
    PruneArtifacts,
    /// `OperatorService.ShowNode`.
    ShowNode,
    /// `OperatorService.Logs`.
    Logs,
    /// `OperatorService.Destroy`.
    Destroy,
    /// `OperatorService.CheckDrift`.
    CheckDrift,
    /// `grpc.health.v1.Health.Check` (the standard health checking protocol).
    HealthCheck,
    /// `grpc.health.v1.Health.Watch` (ended by the controller at shutdown).
    HealthWatch,
    /// `OperatorService.ListControllers`.
    ListControllers,
}

impl Rpc {
    /// Every RPC, for tests that must cover them all.
    pub const ALL: [Rpc; 28] = [
        Rpc::Enroll,
        Rpc::Renew,
        Rpc::Recover,
        Rpc::Connect,
        Rpc::Fetch,
        Rpc::Stat,
        Rpc::Upload,
        Rpc::Apply,
        Rpc::Plan,
        Rpc::Status,
        Rpc::Watch,
        Rpc::CreateToken,
        Rpc::ListAgents,
        Rpc::Revoke,
        Rpc::AbortRollout,
        Rpc::History,
        Rpc::Rollback,
        Rpc::OperateNodes,
        Rpc::Diff,
        Rpc::ListArtifacts,
        Rpc::PruneArtifacts,
        Rpc::ShowNode,
        Rpc::Logs,
        Rpc::Destroy,
        Rpc::CheckDrift,
        Rpc::HealthCheck,
        Rpc::HealthWatch,
        Rpc::ListControllers,
    ];

    /// The fully qualified gRPC path, e.g. `/apimctl.v1.Enrollment/Enroll`, or
    /// `/grpc.health.v1.Health/Check` for the two health methods.
    pub fn path(self) -> &'static str {
        match self {
            Rpc::Enroll => "/apimctl.v1.Enrollment/Enroll",
            Rpc::Renew => "/apimctl.v1.Enrollment/Renew",
            Rpc::Recover => "/apimctl.v1.Enrollment/Recover",
            Rpc::Connect => "/apimctl.v1.AgentService/Connect",
            Rpc::Fetch => "/apimctl.v1.ArtifactService/Fetch",
            Rpc::Stat => "/apimctl.v1.ArtifactService/Stat",
            Rpc::Upload => "/apimctl.v1.ArtifactService/Upload",
            Rpc::Apply => "/apimctl.v1.OperatorService/Apply",
            Rpc::Plan => "/apimctl.v1.OperatorService/Plan",
            Rpc::Status => "/apimctl.v1.OperatorService/Status",
            Rpc::Watch => "/apimctl.v1.OperatorService/Watch",
            Rpc::CreateToken => "/apimctl.v1.OperatorService/CreateToken",
            Rpc::ListAgents => "/apimctl.v1.OperatorService/ListAgents",
            Rpc::Revoke => "/apimctl.v1.OperatorService/Revoke",
            Rpc::AbortRollout => "/apimctl.v1.OperatorService/AbortRollout",
            Rpc::History => "/apimctl.v1.OperatorService/History",
            Rpc::Rollback => "/apimctl.v1.OperatorService/Rollback",
            Rpc::OperateNodes => "/apimctl.v1.OperatorService/OperateNodes",
            Rpc::Diff => "/apimctl.v1.OperatorService/Diff",
            Rpc::ListArtifacts => "/apimctl.v1.OperatorService/ListArtifacts",
            Rpc::PruneArtifacts => "/apimctl.v1.OperatorService/PruneArtifacts",
            Rpc::ShowNode => "/apimctl.v1.OperatorService/ShowNode",
            Rpc::Logs => "/apimctl.v1.OperatorService/Logs",
            Rpc::Destroy => "/apimctl.v1.OperatorService/Destroy",
            Rpc::CheckDrift => "/apimctl.v1.OperatorService/CheckDrift",
            Rpc::HealthCheck => "/grpc.health.v1.Health/Check",
            Rpc::HealthWatch => "/grpc.health.v1.Health/Watch",
            Rpc::ListControllers => "/apimctl.v1.OperatorService/ListControllers",
        }
    }

    /// The RPC served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Rpc> {
        Rpc::ALL.into_iter().find(|r| r.path() == path)
    }

    /// The access rule: the single table of who may call what.
    pub fn access(self) -> Access {
        match self {
            Rpc::Enroll => Access::Anyone,
            Rpc::HealthCheck | Rpc::HealthWatch => Access::Probe,
            Rpc::Connect | Rpc::Fetch => Access::Agent,
            Rpc::Renew | Rpc::Stat => Access::AgentOrOperator,
            Rpc::Recover => Access::RecoveringAgent,
            Rpc::Upload
            | Rpc::Apply
            | Rpc::Plan
            | Rpc::Status
            | Rpc::Watch
            | Rpc::CreateToken
            | Rpc::ListAgents
            | Rpc::Revoke
            | Rpc::AbortRollout
            | Rpc::History
            | Rpc::Rollback
            | Rpc::OperateNodes
            | Rpc::Diff
            | Rpc::ListArtifacts
            | Rpc::PruneArtifacts
            | Rpc::ShowNode
            | Rpc::Logs
            | Rpc::Destroy
            | Rpc::CheckDrift
            | Rpc::ListControllers => Access::Operator,
        }
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path().trim_start_matches('/'))
    }
}

/// The authenticated caller of one call, put into the request extensions by [`AuthService`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The RPC being called.
    pub rpc: Rpc,
    /// The verified client certificate; `None` only on [`Access::Anyone`] RPCs called without
    /// a certificate.
    pub peer: Option<PeerCert>,
}

impl Caller {
    /// The machine of an agent caller. Only agent RPCs call this, and the layer has already
    /// ensured the peer is an agent; anything else is a fail-closed refusal.
    pub fn machine(&self) -> Result<&str, ServerError> {
        match &self.peer {
            Some(PeerCert {
                identity: PeerIdentity::Agent { machine },
                ..
            }) => Ok(machine),
            Some(peer) => Err(ServerError::WrongRole {
                rpc: self.rpc,
                needed: Access::Agent,
                identity: peer.identity.uri(),
            }),
            None => Err(ServerError::NoClientCert { rpc: self.rpc }),
        }
    }

    /// The identity URI, for logs; "anonymous" without a certificate.
    pub fn who(&self) -> String {
        self.peer
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |p| p.identity.uri())
    }
}

/// Reads the [`Caller`] the auth layer stored; refuses the call if it is missing (a route that
/// bypassed the layer must not run).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, ServerError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ServerError::InvalidClientCert {
            reason: "authorization layer did not run for this call".into(),
        })
}

/// Verifies certificates and applies the access table.
#[derive(Clone)]
pub struct Authorizer {
    verifier: Arc<dyn ClientCertVerifier>,
    state: Arc<ControllerState>,
    recovery_grace: std::time::Duration,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// `verifier` is a WebPKI client verifier over the control-plane CA alone;
    /// `recovery_grace` how long after its expiry an agent certificate may still `Recover`.
    pub fn new(
        verifier: Arc<dyn ClientCertVerifier>,
        state: Arc<ControllerState>,
        recovery_grace: std::time::Duration,
    ) -> Self {
        Authorizer {
            verifier,
            state,
            recovery_grace,
        }
    }

    /// Decides one call: `chain` is what the peer presented in the TLS handshake (leaf first),
    /// already proven to belong to the peer by the handshake signature. Checked here on every
    /// call, so a certificate that expires or is revoked while a connection stays open stops
    /// working at once.
    pub fn authorize(
        &self,
        rpc: Rpc,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<Caller, ServerError> {
        let peer = match chain {
            None | Some([]) => None,
            Some([leaf, intermediates @ ..]) if rpc.access() == Access::RecoveringAgent => {
                Some(self.verify_recovering(leaf, intermediates)?)
            }
            Some([leaf, intermediates @ ..]) => Some(self.verify_peer(leaf, intermediates)?),
        };
        match (rpc.access(), &peer) {
            (Access::Anyone | Access::Probe, _) => {}
            (_, None) => return Err(ServerError::NoClientCert { rpc }),
            (Access::AgentOrOperator, Some(_)) => {}
            (Access::Agent | Access::RecoveringAgent, Some(PeerCert { identity, .. })) => {
                if !matches!(identity, PeerIdentity::Agent { .. }) {
                    return Err(ServerError::WrongRole {
                        rpc,
                        needed: Access::Agent,
                        identity: identity.uri(),
                    });
                }
            }
            (Access::Operator, Some(PeerCert { identity, .. })) => {
                if !matches!(identity, PeerIdentity::Operator { .. }) {
                    return Err(ServerError::WrongRole {
                        rpc,
                        needed: Access::Operator,
                        identity: identity.uri(),
                    });
                }
            }
        }
        Ok(Caller { rpc, peer })
    }

    /// Chain to the CA, validity now, clientAuth EKU; then the identity; then revocation.
    pub fn verify_peer(
        &self,
        leaf: &CertificateDer<'static>,
        intermediates: &[CertificateDer<'static>],
    ) -> Result<PeerCert, ServerError> {
        self.verify_at(leaf, intermediates, UnixTime::now())
    }

    /// [`Self::verify_peer`] for `Recover`: an expired certificate is checked as of its last
    /// valid second (chain, signature, clientAuth), and refused once its expiry is more than
    /// the recovery window ago.
    fn verify_recovering(
        &self,
        leaf: &CertificateDer<'static>,
        intermediates: &[CertificateDer<'static>],
    ) -> Result<PeerCert, ServerError> {
        let claimed =
            PeerCert::from_der(leaf).map_err(|source| ServerError::NoIdentity { source })?;
        let now = time::OffsetDateTime::now_utc();
        if now <= claimed.not_after {
            return self.verify_peer(leaf, intermediates);
        }
        if now - claimed.not_after > self.recovery_grace {
            return Err(ServerError::InvalidClientCert {
                reason: format!(
                    "the certificate expired at {}, longer ago than the controller's recovery window of {}s",
                    claimed.not_after,
                    self.recovery_grace.as_secs()
                ),
            });
        }
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(claimed.not_after.unix_timestamp()).unwrap_or(0),
        ));
        self.verify_at(leaf, intermediates, at)
    }

    fn verify_at(
        &self,
        leaf: &CertificateDer<'static>,
        intermediates: &[CertificateDer<'static>],
        at: UnixTime,
    ) -> Result<PeerCert, ServerError> {
        self.verifier
            .verify_client_cert(leaf, intermediates, at)
            .map_err(|e| ServerError::InvalidClientCert {
                reason: e.to_string(),
            })?;
        let peer = PeerCert::from_der(leaf).map_err(|source| ServerError::NoIdentity { source })?;
        if self.state.is_revoked(&peer) {
            return Err(ServerError::Revoked {
                identity: peer.identity.uri(),
            });
        }
        Ok(peer)
    }
}

/// The tower service in front of every route: authorizes, then forwards with a [`Caller`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    authorizer: Authorizer,
}

impl<S> AuthService<S> {
    /// Wraps `inner` (tonic's routes).
    pub fn new(inner: S, authorizer: Authorizer) -> Self {
        AuthService { inner, authorizer }
    }
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let decision = match Rpc::from_path(req.uri().path()) {
            None => Err(ServerError::UnknownMethod {
                path: req.uri().path().to_owned(),
            }),
            Some(rpc) => {
                let chain = req
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|info| info.peer_certs());
                self.authorizer
                    .authorize(rpc, chain.as_deref().map(|c| c.as_slice()))
            }
        };
        match decision {
            Ok(caller) => {
                tracing::debug!(rpc = %caller.rpc, caller = %caller.who(), "call authorized");
                req.extensions_mut().insert(caller);
                // The clone that was polled ready is the one to call (tower's rule).
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(req))
            }
            Err(err) => {
                tracing::warn!(path = %req.uri().path(), error = %err, "call refused");
                let response = err.to_status().into_http::<Body>();
                Box::pin(futures::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apim_proto::prost::Message as _;

    /// Every method in the contract has an access rule, and every rule names a real method.
    #[test]
    fn access_table_covers_the_whole_contract() {
        let fds =
            apim_proto::prost_types::FileDescriptorSet::decode(apim_proto::v1::FILE_DESCRIPTOR_SET)
                .expect("descriptor set decodes");
        let mut paths = Vec::new();
        for file in fds.file.iter().filter(|f| f.package() == "apimctl.v1") {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/apimctl.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        // The two of `grpc.health.v1.Health` come from tonic-health, not the contract.
        paths.push(Rpc::HealthCheck.path().to_owned());
        paths.push(Rpc::HealthWatch.path().to_owned());
        assert_eq!(
            paths.len(),
            Rpc::ALL.len(),
            "methods in the contract: {paths:?}"
        );
        for path in &paths {
            assert!(Rpc::from_path(path).is_some(), "{path} has no access rule");
        }
        assert_eq!(Rpc::from_path("/apimctl.v1.Enrollment/Nope"), None);
        assert_eq!(Rpc::Enroll.access(), Access::Anyone);
        assert_eq!(Rpc::Upload.access(), Access::Operator);
        assert_eq!(Rpc::Fetch.access(), Access::Agent);
        assert_eq!(Rpc::Stat.access(), Access::AgentOrOperator);
        assert_eq!(Rpc::Recover.access(), Access::RecoveringAgent);
        assert_eq!(Rpc::HealthCheck.access(), Access::Probe);
        assert_eq!(Rpc::HealthWatch.access(), Access::Probe);
        assert_eq!(Rpc::ListControllers.access(), Access::Operator);
    }
}
