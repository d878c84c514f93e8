//! The CLI commands that talk to the controller (`apply`, `plan`, `status`, `agents`,
//! `token create`, `revoke`) and the controller host's own (`controller run`,
//! `controller operator-cert`).

use std::io::Write;
use std::path::Path;

use apim_proto::v1::{
    ApplyRequest, ChangeKind, ClusterStatus, CreateTokenRequest, ListAgentsRequest, PlanRequest,
    RevokeRequest, RolloutState, StatusRequest, WatchRequest,
};

use crate::cli::{CliError, Command, ControllerCommand, TokenCommand};
use crate::client::{self, Settings};
use crate::output::{self, Format, bars::LiveBars};
use apim_plan::secrets::EnvSource;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("starting the async runtime: {e}")))
}

/// `apimctl controller …`.
pub fn controller(
    cmd: ControllerCommand,
    stdout: &mut dyn Write,
    _stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    match cmd {
        ControllerCommand::Run { config, log_format } => {
            apim_controller::run::init_logging(log_format == "json");
            let config = apim_controller::run::DaemonConfig::load(&config)?;
            runtime()?.block_on(apim_controller::run::run(config))?;
            Ok(0)
        }
        ControllerCommand::OperatorCert {
            name,
            out,
            data_dir,
        } => {
            let ca = apim_certs::ControlPlaneCa::load_or_create(&apim_controller::run::ca_dir(
                &data_dir,
            ))
            .map_err(apim_controller::run::DaemonError::Ca)?;
            let issued = ca
                .issue_operator_cert(&name, apim_certs::DEFAULT_OPERATOR_CERT_TTL)
                .map_err(apim_controller::run::DaemonError::Ca)?;
            std::fs::create_dir_all(&out)
                .map_err(|e| CliError::Other(format!("{}: {e}", out.display())))?;
            let write = |file: &str, text: &str| {
                let path = out.join(file);
                apim_plan::files::write_private(&path, text.as_bytes())
                    .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
            };
            write("operator.pem", &issued.cert.cert_pem)?;
            write("operator-key.pem", issued.key_pem())?;
            write("ca.pem", ca.cert_pem())?;
            let _ = writeln!(
                stdout,
                "wrote {0}/operator.pem, {0}/operator-key.pem and {0}/ca.pem (expires {1})",
                out.display(),
                issued.cert.not_after
            );
            Ok(0)
        }
    }
}

/// Runs a controller command.
pub fn run(
    cmd: Command,
    settings: Settings,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let settings = settings.with_file()?;
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            Command::Apply {
                plan,
                plan_revision,
                output,
                no_wait,
            } => {
                apply(
                    &settings,
                    &plan,
                    plan_revision,
                    output,
                    no_wait,
                    env,
                    stdout,
                    stderr,
                )
                .await
            }
            Command::Plan { plan, output } => {
                plan_cmd(&settings, &plan, output, env, stdout, stderr).await
            }
            Command::Status { watch, output } => status(&settings, watch, output, stdout).await,
            Command::Agents { output } => agents(&settings, output, stdout).await,
            Command::Token(TokenCommand::Create { machine, ttl }) => {
                let ttl_s = match ttl {
                    Some(t) => apim_plan::plan::parse_duration(&t)
                        .ok_or_else(|| CliError::Other(format!("`{t}` is not a duration")))?
                        .as_secs(),
                    None => 0,
                };
                let mut op = client::operator(settings.connect().await?);
                let r = op
                    .create_token(CreateTokenRequest { machine, ttl_s })
                    .await
                    .map_err(client::ClientError::from)?
                    .into_inner();
                let _ = writeln!(stdout, "{}", r.token);
                Ok(0)
            }
            Command::Revoke { machine } => {
                let mut op = client::operator(settings.connect().await?);
                let r = op
                    .revoke(RevokeRequest {
                        machine: machine.clone(),
                    })
                    .await
                    .map_err(client::ClientError::from)?
                    .into_inner();
                let _ = writeln!(
                    stdout,
                    "revoked {machine}{}",
                    if r.disconnected {
                        " (stream closed)"
                    } else {
                        ""
                    }
                );
                Ok(0)
            }
            Command::Validate { .. } | Command::Render { .. } | Command::Controller(_) => {
                Err(CliError::Other("not a controller command".into()))
            }
        }
    })
}

fn print_details(status: &tonic::Status, stderr: &mut dyn Write) {
    let _ = writeln!(stderr, "{}", output::lines::refusal(status));
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    settings: &Settings,
    path: &Path,
    plan_revision: Option<String>,
    output: Format,
    no_wait: bool,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let Some(crate::prepare::Ready {
        channel,
        text,
        secrets,
    }) = crate::prepare::prepare(settings, path, env, stderr).await?
    else {
        return Ok(1);
    };
    let mut op = client::operator(channel);
    let author = std::env::var("USER").unwrap_or_default();
    let resp = match op
        .apply(ApplyRequest {
            plan_toml: text,
            plan_path: path.display().to_string(),
            expected_cluster_revision: plan_revision,
            author,
            resolved_secrets: secrets,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            print_details(&status, stderr);
            return Ok(1);
        }
    };
    if resp.rollout_id.is_empty() {
        if output == Format::Json {
            let _ = writeln!(stdout, "{}", output::json::apply_unchanged(resp.generation));
        } else {
            let _ = writeln!(stdout, "generation {}: nothing to change", resp.generation);
        }
        return Ok(0);
    }
    if output == Format::Text {
        let _ = writeln!(
            stdout,
            "generation {}: rollout {} started",
            resp.generation, resp.rollout_id
        );
    }
    if no_wait {
        return Ok(0);
    }
    let mut stream = op
        .watch(WatchRequest {})
        .await
        .map_err(client::ClientError::from)?
        .into_inner();
    let mut bars = match output {
        Format::Text => LiveBars::for_terminal(),
        Format::Json => None,
    };
    let mut last_lines: Vec<String> = Vec::new();
    loop {
        let Some(status) = stream.message().await.map_err(client::ClientError::from)? else {
            return Err(CliError::Other(
                "the controller closed the watch stream".into(),
            ));
        };
        let Some(r) = status.rollout.clone() else {
            continue;
        };
        if r.id != resp.rollout_id {
            continue;
        }
        let lines = output::lines::status_lines(&status);
        match (&mut bars, output) {
            (Some(b), _) => b.update(&status, &r),
            (None, Format::Text) => {
                for l in lines.iter().filter(|l| !last_lines.contains(l)) {
                    let _ = writeln!(stdout, "{l}");
                }
            }
            (None, Format::Json) => {}
        }
        last_lines = lines;
        let state = r.state();
        if !matches!(
            state,
            RolloutState::Pending
                | RolloutState::Staging
                | RolloutState::Starting
                | RolloutState::RollingBack
        ) {
            if let Some(b) = bars {
                b.finish();
            }
            if output == Format::Json {
                let _ = writeln!(stdout, "{}", output::json::status(&status));
            } else {
                for l in &last_lines {
                    let _ = writeln!(stdout, "{l}");
                }
                let _ = writeln!(
                    stdout,
                    "rollout {}: {} ({})",
                    r.id,
                    output::state_name(state),
                    r.message
                );
            }
            return Ok(if state == RolloutState::Succeeded {
                0
            } else {
                1
            });
        }
    }
}

async fn plan_cmd(
    settings: &Settings,
    path: &Path,
    output: Format,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let Some(crate::prepare::Ready {
        channel,
        text,
        secrets,
    }) = crate::prepare::prepare(settings, path, env, stderr).await?
    else {
        return Ok(1);
    };
    let resp = match client::operator(channel)
        .plan(PlanRequest {
            plan_toml: text,
            plan_path: path.display().to_string(),
            resolved_secrets: secrets,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            print_details(&status, stderr);
            return Ok(1);
        }
    };
    let changed = resp
        .changes
        .iter()
        .any(|c| c.kind() != ChangeKind::Unchanged);
    if output == Format::Json {
        let _ = writeln!(stdout, "{}", output::json::plan(&resp));
    } else {
        for l in output::lines::plan(&resp) {
            let _ = writeln!(stdout, "{l}");
        }
    }
    Ok(if changed { 2 } else { 0 })
}

fn print_status(status: &ClusterStatus, output: Format, stdout: &mut dyn Write) {
    if output == Format::Json {
        let _ = writeln!(stdout, "{}", output::json::status(status));
        return;
    }
    for l in output::lines::status(status) {
        let _ = writeln!(stdout, "{l}");
    }
}

async fn status(
    settings: &Settings,
    watch: bool,
    output: Format,
    stdout: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut op = client::operator(settings.connect().await?);
    if !watch {
        let s = op
            .status(StatusRequest {})
            .await
            .map_err(client::ClientError::from)?
            .into_inner();
        print_status(&s, output, stdout);
        return Ok(0);
    }
    let mut stream = op
        .watch(WatchRequest {})
        .await
        .map_err(client::ClientError::from)?
        .into_inner();
    while let Some(s) = stream.message().await.map_err(client::ClientError::from)? {
        print_status(&s, output, stdout);
        let _ = stdout.flush();
    }
    Ok(0)
}

async fn agents(
    settings: &Settings,
    output: Format,
    stdout: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .list_agents(ListAgentsRequest {})
        .await
        .map_err(client::ClientError::from)?
        .into_inner();
    for a in &r.agents {
        let _ = match output {
            Format::Json => writeln!(stdout, "{}", output::json::agent(a)),
            Format::Text => writeln!(stdout, "{}", output::lines::agent(a)),
        };
    }
    Ok(0)
}
