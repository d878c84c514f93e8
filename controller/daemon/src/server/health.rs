//! The standard gRPC health checking protocol (`grpc.health.v1.Health`) on the controller's own
//! listener, for load balancers and probes in front of several controllers.
//!
//! It answers for `""` (the whole controller), `apimctl.v1.OperatorService` and
//! `apimctl.v1.AgentService`: NOT_SERVING until [`serve`](super::serve) has the store open and
//! the rollout engine spawned, SERVING then, NOT_SERVING from the moment shutdown begins. It
//! reveals nothing else, which is why [`super::auth::Access::Probe`] lets callers without a
//! client certificate in.
//!
//! tonic-health's `Watch` streams never end by themselves; one held open by a load balancer
//! would keep the graceful shutdown waiting for ever. [`ControllerHealth`] therefore ends every
//! `Watch` at shutdown, with a last NOT_SERVING.

use std::pin::Pin;

use apim_proto::v1::{agent_service_server::AgentServiceServer, operator_service_server};
use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The service names the controller reports on (`""` is the server as a whole).
pub const SERVICES: [&str; 3] = [
    "",
    <operator_service_server::OperatorServiceServer<super::operator::OperatorSvc> as NamedService>::NAME,
    <AgentServiceServer<super::agent::AgentSvc> as NamedService>::NAME,
];

/// Sets every reported service to `status`.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// A reporter with every service NOT_SERVING, and the service answering from it that ends its
/// `Watch` streams when `stop` turns true.
pub async fn service(
    stop: watch::Receiver<bool>,
) -> (HealthReporter, HealthServer<ControllerHealth>) {
    let reporter = HealthReporter::new();
    set_all(&reporter, ServingStatus::NotServing).await;
    let inner = HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        HealthServer::new(ControllerHealth { inner, stop }),
    )
}

/// tonic-health's service, with `Watch` streams bounded by the controller's shutdown.
#[derive(Debug)]
pub struct ControllerHealth {
    inner: HealthService,
    stop: watch::Receiver<bool>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for ControllerHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates = self.inner.watch(request).await?.into_inner();
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let last = futures::stream::once(async {
            Ok(HealthCheckResponse {
                status: WireStatus::NotServing as i32,
            })
        });
        let stream: WatchStream = Box::pin(updates.take_until(stopped).chain(last));
        Ok(Response::new(stream))
    }
}
