//! From an operator's plan to the target spec of every machine: validate and render with the
//! operator's resolved secrets, check the packs are stored, issue node certificates, build the
//! specs; and what changes from one set of specs to another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use apim_plan::pack::{PackConfig, PackSet};
use apim_plan::plan::Plan;
use apim_plan::provided::ProvidedStores;
use apim_plan::render::ClusterRender;
use apim_plan::secrets::{PROVIDED_PREFIX, ResolvedSecrets, is_provided_key};
use apim_plan::validate;
use apim_proto::v1::{DesiredRun, ErrorDetail, MachineSpec};

use super::RolloutError;
use crate::artifacts::ArtifactError;
use crate::pki::ProductPki;
use crate::spec::{SpecInputs, machine_specs};
use crate::state::ControllerState;
use crate::store::RunState;

/// Why a plan is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// To roll it out: its packs must be stored; certificates are issued.
    Apply,
    /// To show what would change (`apimctl plan`): nothing is issued, packs may be missing.
    DryRun,
}

/// A validated, rendered plan and the target spec of every machine.
pub struct Prepared {
    /// The plan.
    pub plan: Plan,
    /// Its render.
    pub render: ClusterRender,
    /// Per machine, the spec with every node desired RUNNING, or STOPPED when the operator
    /// stopped it (generation 0).
    pub targets: BTreeMap<String, MachineSpec>,
    /// The secret values, for masking diffs.
    pub secrets: ResolvedSecrets,
    /// What the operator asked of the plan's nodes (stored with the generation).
    pub run: RunState,
    /// What the render against the packs warns about, and (dry run) the packs not stored yet.
    pub warnings: Vec<ErrorDetail>,
}

fn detail(
    code: &str,
    message: String,
    hint: String,
    file: &str,
    source: &str,
    at: usize,
) -> ErrorDetail {
    let (line, column) = apim_plan::diag::line_col(source, at);
    ErrorDetail {
        code: code.to_string(),
        message,
        hint,
        file: file.to_string(),
        line: line as u32,
        column: column as u32,
        field_path: String::new(),
    }
}

/// Validates and renders `plan_toml` with the operator's `secrets` (never the controller's own
/// environment or files), checks that its packs are stored, and builds the target specs: every
/// node RUNNING but those `run` stops, each with its restart counter. Problems are
/// [`RolloutError::PlanRejected`] with `file:line:col`.
#[allow(clippy::too_many_arguments)]
pub async fn prepare(
    state: &ControllerState,
    pki_dir: &Path,
    plan_path: &str,
    plan_toml: &str,
    secrets: BTreeMap<String, String>,
    mode: Mode,
    strict: bool,
    run: &RunState,
) -> Result<Prepared, RolloutError> {
    let mut secrets = ResolvedSecrets(secrets);
    let path = if plan_path.is_empty() {
        "plan.toml"
    } else {
        plan_path
    };
    let (plan, report) = validate::check(
        Path::new(path),
        plan_toml,
        &secrets,
        validate::Options {
            verify_packs: false,
        },
    );
    let Some(plan) = plan else {
        let errors = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == apim_plan::diag::Severity::Error)
            .map(|d| {
                detail(
                    "plan.invalid",
                    d.message.clone(),
                    d.hint.clone().unwrap_or_default(),
                    path,
                    plan_toml,
                    d.span.start,
                )
            })
            .collect();
        return Err(RolloutError::PlanRejected { errors });
    };
    let provided = check_provided(&plan, &mut secrets, path, plan_toml)?;
    let mut pack_sizes = BTreeMap::new();
    let mut packs = PackSet::none();
    let mut no_base = Vec::new();
    let mut missing = Vec::new();
    for d in plan.distributions.values() {
        // Uploaded to another controller (several on one store): taken from the store.
        if let Err(e) = state.ensure_artifact(&d.sha256.value).await {
            tracing::warn!(error = %e, "taking a pack from the store failed");
        }
        match state.artifacts().size(&d.sha256.value).await {
            Ok(size) => {
                let at = d.path.span.start;
                let config =
                    check_stored_pack(state, plan.cluster.product.value, d, path, plan_toml, at)
                        .await?;
                packs.insert(d.kind, config);
                pack_sizes.insert(d.sha256.value.clone(), size);
            }
            Err(ArtifactError::NotFound { .. }) if mode == Mode::DryRun => {
                no_base.push(detail(
                    "render.no_base",
                    format!(
                        "pack {} is not stored on the controller yet: its nodes are compared \
                         without the pack's own deployment.toml",
                        d.path.value
                    ),
                    "apimctl apply uploads it and renders on its file".into(),
                    path,
                    plan_toml,
                    d.path.span.start,
                ));
            }
            Err(ArtifactError::NotFound { .. }) | Err(ArtifactError::InvalidDigest) => {
                missing.push(not_stored("pack", &d.path, &d.sha256, path, plan_toml));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Drivers are artifacts like packs: stored before an apply may name them.
    for d in plan.drivers.values() {
        if let Err(e) = state.ensure_artifact(&d.sha256.value).await {
            tracing::warn!(error = %e, "taking a driver from the store failed");
        }
        match state.artifacts().size(&d.sha256.value).await {
            Ok(size) => {
                pack_sizes.insert(d.sha256.value.to_ascii_lowercase(), size);
            }
            Err(ArtifactError::NotFound { .. }) if mode == Mode::DryRun => {}
            Err(ArtifactError::NotFound { .. }) | Err(ArtifactError::InvalidDigest) => {
                missing.push(not_stored("driver", &d.path, &d.sha256, path, plan_toml));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !missing.is_empty() {
        return Err(RolloutError::PlanRejected { errors: missing });
    }
    let render = apim_plan::render::render(&plan, &secrets, &packs).map_err(|e| match &e {
        apim_plan::render::RenderError::Base { pack, .. } => RolloutError::PlanRejected {
            errors: vec![detail(
                "plan.pack_base",
                e.to_string(),
                "the pack is not the release's own zip (or is damaged)".into(),
                path,
                plan_toml,
                plan.distributions
                    .get(pack)
                    .map_or(0, |d| d.path.span.start),
            )],
        },
        _ => RolloutError::Render {
            reason: e.to_string(),
        },
    })?;
    let mut findings = apim_plan::lint::check(&plan, &render, &packs);
    if let Some(stores) = &provided {
        findings.extend(apim_plan::provided::name_findings(&plan, stores));
    }
    let findings: Vec<ErrorDetail> = findings
        .into_iter()
        .map(|f| {
            detail(
                f.code,
                f.diagnostic.message,
                f.diagnostic.hint.unwrap_or_default(),
                path,
                plan_toml,
                f.diagnostic.span.start,
            )
        })
        .collect();
    if strict && !findings.is_empty() {
        return Err(RolloutError::PlanRejected { errors: findings });
    }
    let cluster = render.cluster.clone();
    let dir = pki_dir.join(&cluster);
    // Every node certificate the specs below need, issued up front on all cores.
    let nodes: Vec<(String, Vec<String>)> = render
        .machines
        .iter()
        .flat_map(|m| &m.nodes)
        .filter(|n| n.tls.issuer == apim_plan::plan::Issuer::ClusterCa)
        .map(|n| (n.hostname.clone(), n.tls.sans.clone()))
        .collect();
    let pki = tokio::task::spawn_blocking(move || match mode {
        Mode::Apply => {
            let pki = ProductPki::load_or_create(&dir, &cluster)?;
            pki.prepare_nodes(&nodes)?;
            Ok::<_, crate::pki::PkiError>(Some(pki))
        }
        Mode::DryRun => ProductPki::existing(&dir, &cluster),
    })
    .await
    .map_err(|e| RolloutError::Render {
        reason: e.to_string(),
    })?
    .map_err(|e| RolloutError::Render {
        reason: e.to_string(),
    })?;
    // With the secure vault on, the specs carry `[secrets]` encrypted with the primary key
    // (the render above, for the lint, had no key and must never reach a node).
    let render = if plan.secure_vault.enabled {
        vault_render(
            &plan,
            &secrets,
            &packs,
            pki.as_ref(),
            provided.as_ref(),
            mode,
        )?
    } else {
        render
    };
    let desired = |n: &apim_plan::render::NodeRender| {
        if run.stopped.contains(&n.name) {
            DesiredRun::Stopped
        } else {
            DesiredRun::Running
        }
    };
    let inputs = SpecInputs {
        generation: 0,
        plan_generation: 0,
        pack_sizes: &pack_sizes,
        pki: pki.as_ref(),
        provided: provided.as_ref(),
        issue: mode == Mode::Apply,
        desired: &desired,
        restarts: &run.restarts,
    };
    let targets = machine_specs(&render, &inputs).map_err(|e| RolloutError::Render {
        reason: e.to_string(),
    })?;
    Ok(Prepared {
        plan,
        render,
        targets,
        secrets,
        run: run.clone(),
        warnings: no_base.into_iter().chain(findings).collect(),
    })
}

/// The render with each node's `[secrets]` encrypted by the cluster's vault key. A dry run
/// before the first apply has no key yet: its `[secrets]` show as masked changes only.
fn vault_render(
    plan: &Plan,
    secrets: &ResolvedSecrets,
    packs: &PackSet,
    pki: Option<&ProductPki>,
    provided: Option<&ProvidedStores>,
    mode: Mode,
) -> Result<ClusterRender, RolloutError> {
    use apim_plan::plan::Issuer;
    let failed = |reason: String| RolloutError::Render { reason };
    let cipher = match (plan.tls.issuer.value, pki, provided) {
        (Issuer::ClusterCa, Some(p), _) => Some(p.vault_cipher()),
        (Issuer::Provided, _, Some(s)) => Some(crate::pki::provided_vault_cipher(s)),
        _ => None,
    }
    .transpose()
    .map_err(|e| failed(e.to_string()))?;
    if cipher.is_none() && mode == Mode::Apply {
        return Err(failed(
            "the secure vault needs the primary keystore's key to encrypt with".into(),
        ));
    }
    let cipher = cipher
        .as_ref()
        .map(|c| c as &dyn apim_plan::render::VaultCipher);
    apim_plan::render::render_with(plan, secrets, packs, cipher).map_err(|e| failed(e.to_string()))
}

/// `what` (a pack or a driver) at `at` is not stored on the controller: `plan.<what>_missing`
/// at the plan's sha256.
fn not_stored(
    what: &str,
    at: &apim_plan::plan::At<String>,
    sha256: &apim_plan::plan::At<String>,
    file: &str,
    plan_toml: &str,
) -> ErrorDetail {
    detail(
        &format!("plan.{what}_missing"),
        format!(
            "{what} {} (sha256 {}) is not stored on the controller",
            at.value, sha256.value
        ),
        format!("apimctl apply uploads {what}s; or upload it with ArtifactService.Upload"),
        file,
        plan_toml,
        sha256.span.start,
    )
}

/// Opens and checks the plan's provided keystores (sent with the request, among `secrets`)
/// before anything is stored: a store that does not open, a missing alias or a key under
/// another password is refused at the plan's `provided_keystore`/`provided_truststore`. Files
/// the plan does not name are dropped from `secrets` (they would be stored for nothing).
fn check_provided(
    plan: &Plan,
    secrets: &mut ResolvedSecrets,
    file: &str,
    plan_toml: &str,
) -> Result<Option<ProvidedStores>, RolloutError> {
    let stores = apim_plan::provided::load(plan, secrets).map_err(|findings| {
        RolloutError::PlanRejected {
            errors: findings
                .into_iter()
                .map(|f| {
                    detail(
                        f.code,
                        f.diagnostic.message,
                        f.diagnostic.hint.unwrap_or_default(),
                        file,
                        plan_toml,
                        f.diagnostic.span.start,
                    )
                })
                .collect(),
        }
    })?;
    let named: BTreeSet<String> = stores
        .iter()
        .flat_map(|s| s.files())
        .map(|f| format!("{PROVIDED_PREFIX}{}", f.written))
        .collect();
    secrets
        .0
        .retain(|k, _| !is_provided_key(k) || named.contains(k));
    // The vault key must be one the product's cipher tool can use (RSA).
    if let (true, Some(s), Some(at)) = (
        plan.secure_vault.enabled,
        &stores,
        &plan.tls.provided_keystore,
    ) && let Err(e) = crate::pki::provided_vault_cipher(s)
    {
        return Err(RolloutError::PlanRejected {
            errors: vec![detail(
                "plan.provided_keystore",
                format!(
                    "the secure vault encrypts with the key `{}` of the provided keystore: {e}",
                    s.key.alias
                ),
                "the product's secure vault needs an RSA key (2048 bits or more)".into(),
                file,
                plan_toml,
                at.span.start,
            )],
        });
    }
    if let Some(s) = &stores {
        tracing::debug!(
            keystore = %s.keystore.written,
            keystore_sha256 = %s.keystore.sha256,
            truststore_sha256 = s.truststore.as_ref().map_or("", |t| t.sha256.as_str()),
            alias = %s.key.alias,
            names = ?s.key.names,
            "provided keystores checked"
        );
    }
    Ok(stores)
}

/// Reads a stored pack's central directory and configuration files: a pack no agent would
/// unpack, or one for another release, is refused before any machine is touched.
async fn check_stored_pack(
    state: &ControllerState,
    product: apim_plan::catalogue::Product,
    d: &apim_plan::plan::Distribution,
    file: &str,
    plan_toml: &str,
    at: usize,
) -> Result<Arc<PackConfig>, RolloutError> {
    let expected = product.pack_top_dir(d.kind);
    let why = match state.artifacts().pack_config(&d.sha256.value).await {
        Ok(c) if c.top_dir == expected => return Ok(c),
        Ok(c) => format!(
            "its top directory is `{}`, the release needs `{expected}`",
            c.top_dir
        ),
        Err(ArtifactError::BadPack { problem }) => problem.to_string(),
        Err(e) => return Err(e.into()),
    };
    Err(RolloutError::PlanRejected {
        errors: vec![detail(
            "plan.pack_refused",
            format!("pack {} is refused: {why}", d.path.value),
            "apimctl unpacks only packs laid out like WSO2's own zips".into(),
            file,
            plan_toml,
            at,
        )],
    })
}

/// Whether two machine specs are the same apart from their generations.
pub fn same_spec(a: &MachineSpec, b: &MachineSpec) -> bool {
    // Field by field, without copying the specs (tens of KiB each, a thousand per apply); the
    // exhaustive pattern makes a new field a compile error here until it is compared.
    let MachineSpec {
        machine,
        generation: _,
        plan_generation: _,
        hosts_block,
        nodes,
        destroy,
        services,
    } = a;
    *machine == b.machine
        && *destroy == b.destroy
        && *nodes == b.nodes
        && *hosts_block == b.hosts_block
        && *services == b.services
}

/// The machines whose spec changes from `baseline` to `targets` (incl. removed machines).
pub fn changed_machines(
    baseline: &BTreeMap<String, MachineSpec>,
    targets: &BTreeMap<String, MachineSpec>,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = targets
        .iter()
        .filter(|(m, t)| baseline.get(*m).is_none_or(|b| !same_spec(b, t)))
        .map(|(m, _)| m.clone())
        .collect();
    out.extend(
        baseline
            .keys()
            .filter(|m| !targets.contains_key(*m))
            .cloned(),
    );
    out
}

/// An opaque revision of (stored generation, latest rollout, pushed specs, agents' reported
/// configuration) — what `Plan` was computed against.
pub fn cluster_revision(state: &ControllerState) -> Result<String, RolloutError> {
    let (generation, rollout) = state
        .store()
        .read(|tx| Ok((tx.latest_generation()?, tx.latest_rollout()?)))?;
    let mut text = format!("g{generation};");
    if let Some(r) = rollout {
        text.push_str(&format!("r{}:{:?};", r.id, r.state));
    }
    for (m, s) in state.desired_specs() {
        text.push_str(&format!("s{m}:{};", s.generation));
    }
    for a in state.agents() {
        if let Some(st) = &a.last_status {
            for n in &st.nodes {
                text.push_str(&format!("n{}:{}:{};", n.node, n.config_digest, n.running));
            }
        }
    }
    Ok(apim_plan::digest(text.as_bytes())[..16].to_string())
}

#[cfg(test)]
mod tests {
    use apim_proto::v1::{HostsEntry, NodeSpec};

    use super::*;

    fn spec(generation: u64, digest: &str, host: &str) -> MachineSpec {
        MachineSpec {
            machine: "vm-a".into(),
            generation,
            plan_generation: generation + 10,
            hosts_block: vec![HostsEntry {
                address: "10.0.0.1".into(),
                names: vec![host.into()],
            }],
            nodes: vec![NodeSpec {
                name: "gw-1".into(),
                config_digest: digest.into(),
                ..NodeSpec::default()
            }],
            destroy: false,
            services: Vec::new(),
        }
    }

    #[test]
    fn specs_are_the_same_whatever_their_generations_and_differ_in_anything_else() {
        let a = spec(1, "d1", "gw-1.example");
        assert!(same_spec(&a, &spec(7, "d1", "gw-1.example")));
        assert!(!same_spec(&a, &spec(1, "d2", "gw-1.example")), "a node");
        assert!(!same_spec(&a, &spec(1, "d1", "gw-2.example")), "the hosts");
        let destroyed = MachineSpec {
            destroy: true,
            ..a.clone()
        };
        assert!(!same_spec(&a, &destroyed), "destroy");
        let other = MachineSpec {
            machine: "vm-b".into(),
            ..a.clone()
        };
        assert!(!same_spec(&a, &other), "the machine");
    }
}
