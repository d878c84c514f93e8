//! The standard gRPC health checking protocol on the controller's TLS listener: a client
//! without a certificate learns SERVING for the controller and its two main services, nothing
//! for names it does not report, and NOT_SERVING on an open `Watch` once shutdown begins (which
//! then ends the stream, so a probe cannot hold the graceful shutdown).

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use apim_testkit::controller::Controller as Harness;
use apim_testkit::wait::within;

fn ask(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_without_a_certificate_and_turns_not_serving_at_shutdown() {
    let h = Harness::start().await;
    // Over real TLS 1.3, verifying the controller's certificate, presenting none.
    let mut probe = HealthClient::new(h.channel(None).await);
    for service in ["", "apimctl.v1.OperatorService", "apimctl.v1.AgentService"] {
        let status = within(&format!("check {service:?}"), probe.check(ask(service)))
            .await
            .unwrap_or_else(|e| panic!("check {service:?}: {e}"))
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    // Only the reported names: nothing else about the controller is revealed.
    let unknown = within("check unknown", probe.check(ask("apimctl.v1.Enrollment")))
        .await
        .expect_err("not a reported service");
    assert_eq!(unknown.code(), Code::NotFound, "{}", unknown.message());

    // An operator's certificate works too.
    let operator = h.operator_creds("alice");
    let mut with_cert = HealthClient::new(h.channel(Some(&operator)).await);
    let status = within("check with a certificate", with_cert.check(ask("")))
        .await
        .expect("check with a certificate")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    let mut updates = within("watch", probe.watch(ask("")))
        .await
        .expect("watch")
        .into_inner();
    let first = within("first update", updates.message())
        .await
        .expect("first update")
        .expect("an update");
    assert_eq!(first.status(), ServingStatus::Serving);

    // Shutdown begins: the open watch learns NOT_SERVING, then ends, and `serve` returns.
    let shutdown = tokio::spawn(h.shutdown());
    let mut last = None;
    while let Ok(Some(update)) = within("updates during shutdown", updates.message()).await {
        last = Some(update.status());
    }
    assert_eq!(last, Some(ServingStatus::NotServing));
    within("shutdown", shutdown)
        .await
        .expect("shutdown task")
        .expect("clean shutdown");
}
