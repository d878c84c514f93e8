//! Getting a plan ready. [`load_plan`] reads and checks it on the operator's machine (every
//! command that takes a plan); [`prepare`], the step `apply` and `plan` share, then checks the
//! packs (digest, and their central directory), resolves the secrets, connects, and — for
//! `apply` only — uploads the packs the controller lacks. `plan` is a dry run: it sends no
//! pack. Provided keystores are opened and checked in [`load_plan`] and sent with the request
//! (never uploaded as artifacts: they hold private keys).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use apim_plan::diag::{Diagnostic, Report};
use apim_plan::plan::Plan;
use apim_plan::provided::ProvidedStores;
use apim_plan::secrets::EnvSource;
use apim_plan::validate;
use tonic::transport::Channel;

use crate::client::{self, Settings};
use crate::error::CliError;

/// A plan that passed validation, with the text it was read from.
pub struct Loaded {
    /// The plan.
    pub plan: Plan,
    /// The plan file's text.
    pub text: String,
    /// Its provided keystores (`[tls] issuer = "provided"`), read and checked.
    pub provided: Option<ProvidedStores>,
}

impl Loaded {
    /// The warnings about nodes the provided certificate does not name (none without one).
    pub fn provided_findings(&self) -> Vec<apim_plan::lint::Finding> {
        self.provided
            .as_ref()
            .map(|s| apim_plan::provided::name_findings(&self.plan, s))
            .unwrap_or_default()
    }
}

/// Reads and validates the plan at `path`, then opens and checks its provided keystores (here,
/// where the files are at hand). Warnings are printed here; errors come back as
/// [`CliError::InvalidPlan`] (with the warnings among them).
pub fn load_plan(
    path: &Path,
    env: &dyn EnvSource,
    opts: validate::Options,
    stderr: &mut dyn Write,
) -> Result<Loaded, CliError> {
    let text = std::fs::read_to_string(path).map_err(CliError::io(path))?;
    let (plan, mut report) = validate::check(path, &text, env, opts);
    let Some(plan) = plan else {
        return Err(CliError::InvalidPlan(report));
    };
    let provided = match apim_plan::provided::load(&plan, env) {
        Ok(p) => p,
        Err(findings) => {
            report
                .diagnostics
                .extend(findings.into_iter().map(|f| f.diagnostic));
            report
                .diagnostics
                .sort_by_key(|d| (d.span.start, d.span.end));
            return Err(CliError::InvalidPlan(report));
        }
    };
    if !report.diagnostics.is_empty() {
        let _ = write!(stderr, "{}", report.render());
    }
    Ok(Loaded {
        plan,
        text,
        provided,
    })
}

/// The configuration files of the plan's packs found on this machine, for a render here; each
/// pack it cannot read is named on `stderr` (its nodes render without their base file).
pub fn local_packs(plan: &Plan, stderr: &mut dyn Write) -> apim_plan::pack::PackSet {
    use apim_plan::pack;
    let mut set = pack::PackSet::none();
    for d in plan.distributions.values() {
        let path = plan.resolve_path(&d.path.value);
        let read = if path.is_file() {
            pack::inspect_file(&path, &pack::PackLimits::default())
                .and_then(|_| pack::config::read_file(&path))
                .map_err(|e| e.to_string())
        } else {
            Err("not found".to_string())
        };
        match read {
            Ok(config) => set.insert(d.kind, std::sync::Arc::new(config)),
            Err(why) => {
                let _ = writeln!(
                    stderr,
                    "note: pack {}: {why}: its nodes are rendered without the pack's own \
                     deployment.toml, so the product's defaults are not shown",
                    path.display()
                );
            }
        }
    }
    set
}

/// Whether [`prepare`] sends the packs the controller lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packs {
    /// `apply`: upload what is missing.
    Upload,
    /// `plan`: check them here, send nothing.
    CheckOnly,
}

/// A plan checked on the operator's machine (and, for `apply`, with the controller holding its
/// packs).
pub struct Ready {
    /// The connection to the controller.
    pub channel: Channel,
    /// The plan file's text, as sent.
    pub text: String,
    /// Every `{ env }`/`{ file }` secret of the plan, resolved.
    pub secrets: HashMap<String, String>,
    /// The provided keystore files, checked: path as written in the plan → bytes.
    pub provided_files: HashMap<String, Vec<u8>>,
}

/// Validates locally, resolves the secrets, connects, and uploads the packs the controller
/// lacks; prints `uploaded PACK` for each pack sent.
///
/// A pack the operator's digest cache knows is compared with the plan before anything is sent.
/// A new one is not hashed up front: when the controller lacks it, it is hashed as it is read
/// for the upload (one read of the pack instead of two; the controller hashes it too and
/// refuses a mismatch), and only when the controller has its digest already is it hashed
/// here. Either way a pack that is not the plan's is reported at the plan's `sha256` before
/// anything is applied.
pub async fn prepare(
    settings: &Settings,
    path: &Path,
    packs_mode: Packs,
    env: &dyn EnvSource,
    stderr: &mut dyn Write,
) -> Result<Ready, CliError> {
    let opts = validate::Options {
        verify_packs: false,
    };
    let Loaded {
        plan,
        text,
        provided,
    } = load_plan(path, env, opts, stderr)?;
    let provided_files = provided
        .iter()
        .flat_map(|s| s.files())
        .map(|f| (f.written.clone(), f.bytes.clone()))
        .collect();
    let invalid = |diagnostics: Vec<Diagnostic>| {
        CliError::InvalidPlan(Report {
            path: path.display().to_string(),
            source: text.clone(),
            diagnostics,
        })
    };
    let cache = apim_plan::digest_cache::default_dir(&|k| env.var(k));
    let mut packs = Vec::new();
    let mut problems = Vec::new();
    for d in plan.distributions.values() {
        let pack = plan.resolve_path(&d.path.value);
        let top = plan.cluster.product.value.pack_top_dir(d.kind);
        match validate::check_pack(d, &pack, cache.as_deref())
            .and_then(|pending| validate::check_pack_contents(d, &pack, &top).map(|()| pending))
        {
            Ok(pending) => packs.push((d, pack, pending)),
            Err(problem) => problems.push(problem),
        }
    }
    // Drivers are small: each is read and checked here before anything is sent.
    let mut drivers = Vec::new();
    for d in plan.drivers.values() {
        match validate::check_driver_file(&plan, d, env) {
            Ok(()) => drivers.push((d, plan.resolve_path(&d.path.value))),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let secrets = apim_plan::secrets::collect(&plan, env).map_err(CliError::Secret)?;
    let channel = settings.connect().await?;
    for (d, pack, pending) in packs {
        let uploaded = match packs_mode {
            Packs::Upload => {
                client::upload_if_missing(channel.clone(), &pack, &d.sha256.value).await
            }
            Packs::CheckOnly => Ok(client::Uploaded {
                sent: false,
                read_sha256: None,
            }),
        };
        if let Some(pending) = pending {
            let actual = match uploaded.as_ref().ok().and_then(|u| u.read_sha256.clone()) {
                Some(read) => read,
                // Not sent (or the upload failed): hash it here.
                None => {
                    let at = pending.path().to_path_buf();
                    tokio::task::spawn_blocking(move || apim_plan::digest_cache::sha256_file(&at))
                        .await
                        .map_err(|source| CliError::Hashing {
                            path: pack.clone(),
                            source,
                        })?
                        .map_err(CliError::io(&pack))?
                }
            };
            if !actual.eq_ignore_ascii_case(&d.sha256.value) {
                return Err(invalid(vec![validate::pack_mismatch(d, &pack, &actual)]));
            }
            pending.remember(&actual);
        }
        if uploaded?.sent {
            let _ = writeln!(stderr, "uploaded {}", pack.display());
        }
    }
    if packs_mode == Packs::Upload {
        for (d, jar) in drivers {
            if client::upload_if_missing(channel.clone(), &jar, &d.sha256.value)
                .await?
                .sent
            {
                let _ = writeln!(stderr, "uploaded {}", jar.display());
            }
        }
    }
    Ok(Ready {
        channel,
        text,
        secrets: secrets.into_iter().collect(),
        provided_files,
    })
}
