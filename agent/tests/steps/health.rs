//! Readiness probes: the log line after an offset, TCP, HTTP(S), liveness, cancellation.

use std::io::Write;
use std::time::Duration;

use apim_agent::exec::ExecError;
use apim_agent::exec::health::{
    self, HttpProbe, LogProbe, ProcessProbe, ReadinessOutcome, ReadinessSpec, TcpProbe,
};
use apim_agent::exec::process::{self, StartOutcome, StopOutcome, StopVia, TokioRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use apim_testkit::fake_node::{CARBON_STARTED, FakeNode};

use crate::tmp;

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test]
async fn log_probe_ignores_the_line_from_a_previous_run() {
    let d = tmp();
    let log = d.path().join("wso2carbon.log");
    std::fs::write(
        &log,
        format!("old run\n... {CARBON_STARTED} 35 sec\nshutdown\n"),
    )
    .unwrap();
    let offset = health::log_offset(&log);
    let spec = ReadinessSpec {
        log: Some(LogProbe {
            path: log.clone(),
            needle: CARBON_STARTED.into(),
            start_offset: offset,
        }),
        ..Default::default()
    };
    let r = health::wait_ready(&spec, Duration::from_millis(300), never())
        .await
        .unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::TimedOut, "{r}");
    assert!(
        r.checks[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("not logged yet")
    );

    // The new run logs the line, split across two writes.
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(b"booting\nTID: [-1234] INFO - WSO2 Carbon st")
                .unwrap();
            f.flush().unwrap();
            tokio::task::yield_now().await;
            f.write_all(b"arted in 12 sec\n").unwrap();
        })
    };
    let r = health::wait_ready(&spec, Duration::from_secs(30), never())
        .await
        .unwrap();
    writer.await.unwrap();
    assert!(r.is_ready(), "{r}");

    // A rotated (shorter) file is read from its start.
    std::fs::write(&log, format!("{CARBON_STARTED} 1 sec\n")).unwrap();
    let r = health::wait_ready(&spec, Duration::from_secs(30), never())
        .await
        .unwrap();
    assert!(r.is_ready(), "{r}");
}

#[tokio::test]
async fn tcp_probe_passes_on_an_open_port_and_fails_on_a_closed_one() {
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ok = ReadinessSpec {
        tcp: vec![TcpProbe {
            host: "127.0.0.1".into(),
            port: open_port,
        }],
        ..Default::default()
    };
    assert!(
        health::wait_ready(&ok, Duration::from_secs(30), never())
            .await
            .unwrap()
            .is_ready()
    );
    let bad = ReadinessSpec {
        tcp: vec![
            TcpProbe {
                host: "127.0.0.1".into(),
                port: open_port,
            },
            TcpProbe {
                host: "127.0.0.1".into(),
                port: closed_port,
            },
        ],
        ..Default::default()
    };
    let r = health::wait_ready(&bad, Duration::from_secs(2), never())
        .await
        .unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::TimedOut);
    assert!(r.checks[0].passed_after.is_some());
    assert!(r.checks[1].passed_after.is_none() && r.checks[1].attempts >= 1);
    assert!(r.checks[1].last_error.is_some(), "{r}");
}

/// A tiny HTTP/1.1 server: 200 for paths containing "ok" or "healthcheck", 500 otherwise.
async fn serve_http(listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acc) => {
                    if let Ok(s) = acc.accept(sock).await {
                        answer(s).await;
                    }
                }
                None => answer(sock).await,
            }
        });
    }
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let status = if path.contains("ok") || path.contains("healthcheck") {
        "200 OK"
    } else {
        "500 Internal Server Error"
    };
    let _ = s
        .write_all(
            format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
                .as_bytes(),
        )
        .await;
    let _ = s.shutdown().await;
}

#[tokio::test]
async fn http_probe_checks_the_status() {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_http(listener, None));
    let spec = ReadinessSpec {
        http: vec![HttpProbe {
            url: format!("http://127.0.0.2:{port}/services/Version?ok"),
            expect_status: 200,
            expect_body: None,
        }],
        ..Default::default()
    };
    assert!(
        health::wait_ready(&spec, Duration::from_secs(30), never())
            .await
            .unwrap()
            .is_ready()
    );
    let spec = ReadinessSpec {
        http: vec![HttpProbe {
            url: format!("http://127.0.0.2:{port}/fail"),
            expect_status: 200,
            expect_body: None,
        }],
        ..Default::default()
    };
    assert_eq!(
        health::probe_http(&spec.http[0].url, Duration::from_secs(10)).await,
        Ok(500)
    );
    let r = health::wait_ready(&spec, Duration::from_secs(2), never())
        .await
        .unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::TimedOut);
    assert_eq!(
        r.checks[0].last_error.as_deref(),
        Some("status 500, expected 200")
    );
    let bad = ReadinessSpec {
        http: vec![HttpProbe {
            url: "ftp://x/".into(),
            expect_status: 200,
            expect_body: None,
        }],
        ..Default::default()
    };
    assert!(matches!(
        health::wait_ready(&bad, Duration::from_secs(1), never()).await,
        Err(ExecError::InvalidProbe { .. })
    ));
    server.abort();
}

#[tokio::test]
async fn https_probe_accepts_the_nodes_self_signed_certificate() {
    let ck = rcgen::generate_simple_self_signed(vec!["gw.wso2.com".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_http(listener, Some(acceptor)));
    let url = format!("https://127.0.0.3:{port}/api/am/gateway/v2/server-startup-healthcheck");
    assert_eq!(
        health::probe_http(&url, Duration::from_secs(10)).await,
        Ok(200)
    );
    // Plain HTTP against the TLS port fails instead of hanging.
    assert!(
        health::probe_http(&url.replace("https", "http"), Duration::from_secs(10))
            .await
            .is_err()
    );
    server.abort();
}

#[tokio::test]
async fn a_dead_process_fails_fast_with_its_log_tail() {
    let node = FakeNode::new();
    std::fs::write(node.log(), "previous run\n").unwrap();
    let offset = health::log_offset(&node.log());
    std::fs::write(node.home.join("wso2carbon.pid"), "1").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(node.log())
        .unwrap();
    f.write_all(b"ERROR - Cannot start: port 9443 in use\n")
        .unwrap();
    let spec = ReadinessSpec {
        log: Some(LogProbe {
            path: node.log(),
            needle: CARBON_STARTED.into(),
            start_offset: offset,
        }),
        tcp: vec![TcpProbe {
            host: "127.0.0.1".into(),
            port: 1,
        }],
        process: Some(ProcessProbe {
            server: node.server(),
        }),
        ..Default::default()
    };
    let r = health::wait_ready(&spec, Duration::from_secs(60), never())
        .await
        .unwrap();
    let ReadinessOutcome::ProcessDied { state, log_tail } = &r.outcome else {
        panic!("{r}")
    };
    assert_eq!(state, "Stale(1)");
    assert_eq!(log_tail, "ERROR - Cannot start: port 9443 in use\n");
    assert!(r.elapsed < Duration::from_secs(30), "fails fast: {r}");
}

#[tokio::test]
async fn waiting_can_be_cancelled() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spec = ReadinessSpec {
        tcp: vec![TcpProbe {
            host: "127.0.0.1".into(),
            port: 1,
        }],
        ..Default::default()
    };
    let canceller = tokio::spawn(async move {
        let _ = tx.send(());
    });
    let r = health::wait_ready(&spec, Duration::from_secs(600), async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    canceller.await.unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::Cancelled);
}

#[tokio::test]
async fn fake_node_start_wait_ready_stop() {
    let node = FakeNode::new();
    std::fs::write(
        node.log(),
        format!("{CARBON_STARTED} 99 sec (previous run)\n"),
    )
    .unwrap();
    let offset = health::log_offset(&node.log());
    let StartOutcome::Started { pid, .. } =
        process::start(&TokioRunner, &node.start_spec("normal"))
            .await
            .unwrap()
    else {
        panic!()
    };
    let spec = ReadinessSpec {
        log: Some(LogProbe {
            path: node.log(),
            needle: CARBON_STARTED.into(),
            start_offset: offset,
        }),
        process: Some(ProcessProbe {
            server: node.server(),
        }),
        ..Default::default()
    };
    let r = health::wait_ready(&spec, Duration::from_secs(60), never())
        .await
        .unwrap();
    assert!(r.is_ready(), "{r}");
    assert_eq!(r.checks.len(), 2);
    assert_eq!(
        process::stop(&TokioRunner, &node.stop_spec("normal"))
            .await
            .unwrap(),
        StopOutcome::Stopped {
            pid,
            via: StopVia::Script
        }
    );
}

#[tokio::test]
async fn http_probe_checks_the_body_when_asked() {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_http(listener, None));
    let url = format!("http://127.0.0.2:{port}/services/Version?ok");
    assert_eq!(
        health::probe_http_body(&url, Duration::from_secs(10)).await,
        Ok((200, "hi".to_string()))
    );
    let spec = |text: &str| ReadinessSpec {
        http: vec![HttpProbe {
            url: url.clone(),
            expect_status: 200,
            expect_body: Some(text.to_string()),
        }],
        ..Default::default()
    };
    let ready = health::wait_ready(&spec("hi"), Duration::from_secs(30), never())
        .await
        .unwrap();
    assert!(ready.is_ready());
    // Another server on the port (wrong product name) never counts as this node.
    let r = health::wait_ready(
        &spec("WSO2 API Manager-3.2.0"),
        Duration::from_secs(2),
        never(),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::TimedOut);
    let last = r
        .checks
        .iter()
        .find_map(|c| c.last_error.clone())
        .unwrap_or_default();
    assert!(last.contains("WSO2 API Manager-3.2.0"), "{last}");
    server.abort();
}
