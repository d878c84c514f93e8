//! `apimctl destroy`: every machine that holds a spec is sent one that says destroy (no nodes, no
//! hosts block, a higher generation), and the destroy is stored as a plan generation of its own
//! (no plan text, no secrets, author "… (destroy)") with a [`Phase::Destroyed`] record naming the
//! machines and nodes it took down; the baseline is cleared, so the next apply is a first
//! rollout. Everything is written in one transaction; the agents carry it out when they receive
//! it (at once, or when they reconnect) and report its generation with no nodes.

use std::collections::{BTreeMap, BTreeSet};

use apim_proto::v1::MachineSpec;

use super::{NodeProgress, Phase, RolloutError, RolloutRecord};
use crate::state::ControllerState;

/// What [`destroy`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destroyed {
    /// The plan generation it was recorded as.
    pub generation: u64,
    /// Every machine sent a destroy spec, with that spec's generation.
    pub machines: BTreeMap<String, u64>,
}

/// Records the destroy and pushes the destroy specs (see the module docs). Refused while a
/// rollout is in flight, or when no machine holds a spec.
pub fn destroy(state: &ControllerState, author: &str) -> Result<Destroyed, RolloutError> {
    let pushed = state.desired_specs();
    if pushed.is_empty() {
        return Err(RolloutError::NothingToDestroy);
    }
    let stored = state.store().write(|tx| {
        if let Some(r) = tx.latest_rollout()?
            && r.state.active()
        {
            return Ok(Err(RolloutError::DestroyDuringRollout {
                id: r.id,
                state: format!("{:?}", r.state),
            }));
        }
        let generation = tx.insert_plan(author, "", "", &BTreeMap::new())?;
        let specs: Vec<MachineSpec> = pushed
            .values()
            .map(|s| MachineSpec {
                machine: s.machine.clone(),
                generation: s.generation + 1,
                plan_generation: generation,
                destroy: true,
                ..MachineSpec::default()
            })
            .collect();
        let nodes: BTreeMap<String, NodeProgress> = pushed
            .values()
            .flat_map(|s| {
                s.nodes.iter().map(|n| {
                    let p = NodeProgress {
                        machine: s.machine.clone(),
                        role: n.role.clone(),
                        changed: true,
                        target_digest: String::new(),
                        released_at_ms: None,
                        release_generation: 0,
                        done: false,
                        healthy_at_ms: None,
                    };
                    (n.name.clone(), p)
                })
            })
            .collect();
        let id = format!("destroy-{generation}");
        let record = RolloutRecord {
            id: id.clone(),
            generation,
            state: Phase::Destroyed,
            tier: 0,
            message: format!(
                "destroyed by {author}: {} machine(s) told to stop {} node(s) and remove their \
                 trees, packs and hosts block",
                specs.len(),
                nodes.len()
            ),
            rollback: false,
            max_parallel: 1,
            health_timeout_s: 1,
            tiers: Vec::new(),
            ha_roles: BTreeSet::new(),
            nodes,
            machines: specs
                .iter()
                .map(|s| (s.machine.clone(), s.generation))
                .collect(),
            settled_at_ms: None,
        };
        for s in &specs {
            tx.save_spec(s)?;
        }
        tx.set_baseline(&[])?;
        // The gateways' shared files went with their trees: a cluster applied again starts
        // with its packs' own.
        tx.forget_folder_files()?;
        tx.save_targets(&id, &specs)?;
        tx.save_rollout(&record)?;
        Ok(Ok((generation, specs)))
    })?;
    let (generation, specs) = stored?;
    let machines = specs
        .iter()
        .map(|s| (s.machine.clone(), s.generation))
        .collect();
    tracing::warn!(generation, machines = specs.len(), %author, "cluster destroyed: destroy specs pushed");
    state.publish_specs(specs);
    Ok(Destroyed {
        generation,
        machines,
    })
}
