//! `OperatorService.ShowNode` and `.Logs`: what a node runs according to the controller, and its
//! log, read by its agent.
//!
//! `ShowNode` answers from the controller's own state: the spec last pushed to the node's machine
//! and what its agent last reported. No secret leaves: every configuration file is masked
//! ([`rollout::diff::mask_text`]: secret-named keys, and every secret value of the plan
//! generation and of the node's own spec wherever it appears), secret files are named but never
//! shown, and keystores and database initialisation are not sent at all.
//!
//! `Logs` relays a `TailLog` through the node's agent ([`ControllerState::open_tail`]); the
//! operator's hang-up cancels it on the agent.

use std::pin::Pin;

use apim_plan::secrets::is_provided_key;
use apim_proto::text::printable;
use apim_proto::v1::{
    DesiredRun, LogChunk, LogsRequest, MachineSpec, NodeSpec, NodeStatus, ShowNodeRequest,
    ShowNodeResponse, ShownFile, TailLog,
};
use futures::Stream;
use tonic::{Request, Status};

use super::auth::caller;
use super::error::ServerError;
use super::operator::OperatorSvc;
use crate::rollout::diff::mask_text;
use crate::state::ControllerState;

/// Most lines `Logs` sends first.
pub const MAX_LOG_LINES: u32 = 10_000;
/// Lines `Logs` sends first when the request says 0.
const DEFAULT_LOG_LINES: u32 = 10;

/// The response stream of `Logs`.
pub type LogsStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

/// The machine spec naming `node`, and the node's spec in it.
fn find_node(state: &ControllerState, node: &str) -> Result<(MachineSpec, NodeSpec), ServerError> {
    state
        .desired_specs()
        .into_values()
        .find_map(|m| {
            let n = m.nodes.iter().find(|n| n.name == node).cloned();
            n.map(|n| (MachineSpec::clone(&m), n))
        })
        .ok_or_else(|| ServerError::UnknownNode {
            node: node.to_owned(),
        })
}

/// Every secret value that may appear in the node's configuration: the plan generation's
/// resolved secrets and what the spec itself marks secret or carries as a password.
fn secret_values(state: &ControllerState, spec: &MachineSpec, node: &NodeSpec) -> Vec<String> {
    let mut out: Vec<String> = match state.store().read(|tx| tx.plan(spec.plan_generation)) {
        Ok(Some(plan)) => plan
            .secrets
            .into_iter()
            .filter(|(k, _)| !is_provided_key(k))
            .map(|(_, v)| v)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the plan's secrets to mask them; masking by key only");
            Vec::new()
        }
    };
    out.extend(
        node.env
            .iter()
            .filter(|e| e.secret)
            .map(|e| e.value.clone()),
    );
    out.extend(
        node.files
            .iter()
            .filter(|f| f.secret)
            .flat_map(|f| f.content.lines().map(str::to_owned).collect::<Vec<_>>()),
    );
    if let Some(k) = &node.keystores {
        out.push(k.password.clone());
        out.push(k.truststore_password.clone());
    }
    out.extend(
        node.databases
            .iter()
            .filter_map(|d| d.init.as_ref())
            .map(|i| i.password.clone()),
    );
    out.retain(|s| !s.trim().is_empty());
    // Longest first: a secret that contains another is masked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn desired_name(d: i32) -> String {
    match DesiredRun::try_from(d).unwrap_or(DesiredRun::Unspecified) {
        DesiredRun::Running => "running",
        DesiredRun::Stopped => "stopped",
        DesiredRun::Staged | DesiredRun::Unspecified => "staged",
    }
    .to_owned()
}

/// What `node` runs according to `state` (see the module docs).
pub fn show_node(state: &ControllerState, node: &str) -> Result<ShowNodeResponse, ServerError> {
    let (spec, n) = find_node(state, node)?;
    let secrets = secret_values(state, &spec, &n);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let mut files = vec![ShownFile {
        path: n.deployment_toml_path.clone(),
        content: mask_text(&n.deployment_toml, &secrets),
        secret: false,
    }];
    files.extend(n.files.iter().map(|f| ShownFile {
        path: f.path.clone(),
        content: if f.secret {
            String::new()
        } else {
            mask_text(&f.content, &secrets)
        },
        secret: f.secret,
    }));
    let env = n
        .env
        .iter()
        .map(|e| {
            let value = if e.secret {
                apim_plan::render::MASK.to_owned()
            } else {
                mask_text(&e.value, &secrets)
            };
            format!("{}={value}", e.name)
        })
        .collect();
    let agent = state.agent(&spec.machine);
    let status: Option<NodeStatus> = agent
        .as_ref()
        .and_then(|a| a.last_status.as_ref())
        .and_then(|r| r.nodes.iter().find(|s| s.node == n.name).cloned())
        .map(|mut s| {
            if s.generation > 0 {
                s.plan_generation = state
                    .store()
                    .read(|tx| tx.plan_generation_of(&spec.machine, s.generation))
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            }
            s
        });
    let pack = n.pack.clone().unwrap_or_default();
    Ok(ShowNodeResponse {
        node: n.name.clone(),
        machine: spec.machine.clone(),
        role: n.role.clone(),
        product: n.product.clone(),
        plan_generation: spec.plan_generation,
        spec_generation: spec.generation,
        desired: desired_name(n.desired),
        pack_file: pack.file_name,
        pack_sha256: pack.sha256,
        install_dir: n.install_dir.clone(),
        config_digest: n.config_digest.clone(),
        files,
        start_argv: n.start.as_ref().map(|c| c.argv.clone()).unwrap_or_default(),
        stop_argv: n.stop.as_ref().map(|c| c.argv.clone()).unwrap_or_default(),
        env,
        hosts_block: spec
            .hosts_block
            .iter()
            .map(|h| format!("{} {}", h.address, h.names.join(" ")))
            .collect(),
        log_dir: n.log_dir.clone(),
        status,
        reachable: agent.is_some_and(|a| a.connected),
    })
}

/// A log file name the agent could serve: a plain relative path (the agent checks it again,
/// against the folder itself).
fn check_file(file: &str) -> Result<(), ServerError> {
    let p = std::path::Path::new(file);
    let plain = !file.contains('\0')
        && !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(ServerError::InvalidArgument {
            field: "file",
            reason: format!(
                "{:?} is not a plain path inside the node's log folder (no '..', not absolute)",
                printable(file)
            ),
        })
    }
}

impl OperatorSvc {
    pub(super) fn show_node_inner(
        &self,
        req: Request<ShowNodeRequest>,
    ) -> Result<ShowNodeResponse, ServerError> {
        caller(&req)?;
        show_node(&self.ctx().state, &req.get_ref().node)
    }

    pub(super) fn logs_inner(&self, req: Request<LogsRequest>) -> Result<LogsStream, ServerError> {
        let who = caller(&req)?.who();
        let LogsRequest {
            node,
            file,
            lines,
            follow,
        } = req.into_inner();
        if lines > MAX_LOG_LINES {
            return Err(ServerError::InvalidArgument {
                field: "lines",
                reason: format!("{lines} is more than {MAX_LOG_LINES}"),
            });
        }
        if !file.is_empty() {
            check_file(&file)?;
        }
        let state = &self.ctx().state;
        let (spec, _) = find_node(state, &node)?;
        let machine = spec.machine;
        let tail = TailLog {
            node: node.clone(),
            file,
            lines: if lines == 0 { DEFAULT_LOG_LINES } else { lines },
            follow,
        };
        let mut stream = state.open_tail(&machine, tail)?;
        tracing::info!(%node, %machine, command = stream.id(), follow, operator = %who, "log stream opened");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut stop = self.ctx().stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(ServerError::ShuttingDown.into())).await;
                        return;
                    }
                    next = stream.next() => match next {
                        Some(Ok(chunk)) => {
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(end)) => {
                            let e = if end.by_agent {
                                ServerError::LogRefused {
                                    machine: machine.clone(),
                                    reason: printable(&end.message).into_owned(),
                                }
                            } else {
                                ServerError::LogDropped { reason: end.message }
                            };
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apim_certs::ControlPlaneCa;
    use apim_proto::prost::Message as _;
    use apim_proto::v1::{
        CommandSpec, DatabaseInit, DatabaseUse, EnvVar, HostsEntry, KeystoreSpec, NodeFile,
    };

    use super::*;

    const ADMIN: &str = "Adm1n-pa55-e2e";
    const DB: &str = "db-pa55-e2e";
    const KEYSTORE: &str = "keystore-pa55";
    const VAULT: &str = "vault-master-pa55";
    const ENV: &str = "env-pa55";
    const DBINIT: &str = "dbinit-pa55";

    fn state_with_node() -> (tempfile::TempDir, ControllerState) {
        let dir = tempfile::tempdir().unwrap();
        let ca = ControlPlaneCa::load_or_create(&dir.path().join("ca")).unwrap();
        let state = ControllerState::new(ca, &dir.path().join("artifacts")).unwrap();
        let secrets = BTreeMap::from([
            ("env:APIM_ADMIN_PASSWORD".to_owned(), ADMIN.to_owned()),
            ("file:secrets/db".to_owned(), DB.to_owned()),
        ]);
        let generation = state
            .store()
            .write(|tx| tx.insert_plan("op", "plan.toml", "[cluster]\n", &secrets))
            .unwrap();
        let toml = format!(
            "[server]\nhostname = \"gw.example\"\n\n[super_admin]\nusername = \"admin\"\n\
             password = \"{ADMIN}\"\n\n[database.apim_db]\n\
             url = \"jdbc:mysql://db:3306/apim?user=apim&amp;pw={DB}\"\nusername = \"apim\"\n\
             password = \"{DB}\"\n\n[keystore.tls]\npassword = \"{KEYSTORE}\"\n\
             alias = \"wso2carbon\"\n\n[secrets]\nadmin = \"[{ADMIN}]\"\n"
        );
        let node = NodeSpec {
            name: "gw-1".into(),
            role: "gateway".into(),
            product: "wso2am-3.2.0".into(),
            deployment_toml: toml,
            deployment_toml_path: "repository/conf/deployment.toml".into(),
            start: Some(CommandSpec {
                argv: vec!["bin/wso2server.sh".into(), "start".into()],
                ..CommandSpec::default()
            }),
            env: vec![
                EnvVar {
                    name: "JAVA_OPTS".into(),
                    value: "-Xmx1g".into(),
                    secret: false,
                },
                EnvVar {
                    name: "VAULT_PASS".into(),
                    value: ENV.into(),
                    secret: true,
                },
            ],
            files: vec![
                NodeFile {
                    path: "password-tmp".into(),
                    content: VAULT.into(),
                    secret: true,
                    before_each_start: true,
                },
                NodeFile {
                    path: "repository/conf/security/secret-conf.properties".into(),
                    content: format!("keystore.identity.location=x\nsecret={DB}\n"),
                    secret: false,
                    before_each_start: false,
                },
            ],
            keystores: Some(KeystoreSpec {
                password: KEYSTORE.into(),
                truststore_password: KEYSTORE.into(),
                node_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
                ..KeystoreSpec::default()
            }),
            databases: vec![DatabaseUse {
                id: "apim_db".into(),
                init: Some(DatabaseInit {
                    password: DBINIT.into(),
                    ..DatabaseInit::default()
                }),
                ..DatabaseUse::default()
            }],
            log_dir: "repository/logs".into(),
            desired: DesiredRun::Running.into(),
            ..NodeSpec::default()
        };
        state.set_desired_spec(MachineSpec {
            machine: "vm-gw".into(),
            generation: 3,
            plan_generation: generation,
            hosts_block: vec![HostsEntry {
                address: "10.0.0.5".into(),
                names: vec!["gw.example".into()],
            }],
            nodes: vec![node],
            destroy: false,
            services: Vec::new(),
        });
        (dir, state)
    }

    #[test]
    fn show_masks_every_secret_in_every_field() {
        let (_dir, state) = state_with_node();
        let shown = show_node(&state, "gw-1").expect("shown");
        let bytes = shown.encode_to_vec();
        let text = format!("{shown:?}");
        for secret in [ADMIN, DB, KEYSTORE, VAULT, ENV, DBINIT, "PRIVATE KEY"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is in the response: {text}"
            );
        }
        let toml = &shown.files[0].content;
        assert!(toml.contains("username = \"admin\""), "{toml}");
        assert!(toml.contains("password = \"********\""), "{toml}");
        assert!(toml.contains("hostname = \"gw.example\""), "{toml}");
        assert!(toml.contains("pw=********"), "masked by value: {toml}");
        assert_eq!(shown.files[1].path, "password-tmp");
        assert!(shown.files[1].secret && shown.files[1].content.is_empty());
        assert_eq!(shown.env, ["JAVA_OPTS=-Xmx1g", "VAULT_PASS=********"]);
        assert_eq!(shown.start_argv, ["bin/wso2server.sh", "start"]);
        assert_eq!(shown.hosts_block, ["10.0.0.5 gw.example"]);
        assert_eq!(
            (shown.machine.as_str(), shown.desired.as_str()),
            ("vm-gw", "running")
        );
        assert_eq!(shown.log_dir, "repository/logs");
    }

    #[test]
    fn an_unknown_node_is_not_found_by_name() {
        let (_dir, state) = state_with_node();
        let e = show_node(&state, "gw-9").unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.to_string().contains("gw-9"), "{e}");
    }

    #[test]
    fn log_file_names_must_stay_in_the_folder() {
        assert!(check_file("wso2carbon.log").is_ok());
        assert!(check_file("http_access/2026.log").is_ok());
        for bad in ["../../../etc/passwd", "/etc/passwd", "./x", "a/../b"] {
            assert_eq!(
                check_file(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
