//! Which plan generation each machine spec generation was rendered from, remembered as specs
//! are published: `Status` shows it for every node an agent reports, and asking the store once
//! per machine made a status of a thousand machines wait on the store a thousand times (behind
//! every write of a rollout in flight).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::ControllerState;
use crate::store::StoreError;

/// Spec generations remembered per machine (the newest; an older one is asked of the store).
const KEPT_PER_MACHINE: usize = 8;

/// Per machine, spec generation -> plan generation (only known, non-zero ones).
#[derive(Debug, Default)]
pub(super) struct PlanGenerations(Mutex<HashMap<String, BTreeMap<u64, u64>>>);

impl PlanGenerations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<u64, u64>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that `machine`'s spec `generation` came from `plan_generation` (0: unknown,
    /// not remembered, as the store answers).
    pub(super) fn note(&self, machine: &str, generation: u64, plan_generation: u64) {
        if generation == 0 || plan_generation == 0 {
            return;
        }
        let mut all = self.lock();
        let kept = match all.get_mut(machine) {
            Some(kept) => kept,
            None => all.entry(machine.to_owned()).or_default(),
        };
        kept.insert(generation, plan_generation);
        while kept.len() > KEPT_PER_MACHINE {
            kept.pop_first();
        }
    }

    fn get(&self, machine: &str, generation: u64) -> Option<u64> {
        self.lock()
            .get(machine)
            .and_then(|kept| kept.get(&generation))
            .copied()
    }
}

impl ControllerState {
    /// The plan generation machine spec `generation` of `machine` was rendered from (`None`:
    /// unknown), from memory when this controller published that spec or was asked before, else
    /// from the store. A spec generation's plan generation never changes once stored.
    pub fn plan_generation_of(
        &self,
        machine: &str,
        generation: u64,
    ) -> Result<Option<u64>, StoreError> {
        if let Some(g) = self.plan_generations.get(machine, generation) {
            return Ok(Some(g));
        }
        let g = self
            .store
            .read(|tx| tx.plan_generation_of(machine, generation))?;
        if let Some(g) = g {
            self.plan_generations.note(machine, generation, g);
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use apim_certs::ControlPlaneCa;
    use apim_proto::v1::MachineSpec;

    use super::*;

    fn spec(machine: &str, generation: u64, plan_generation: u64) -> MachineSpec {
        MachineSpec {
            machine: machine.into(),
            generation,
            plan_generation,
            ..MachineSpec::default()
        }
    }

    #[test]
    fn published_specs_answer_from_memory_and_others_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ControlPlaneCa::load_or_create(&dir.path().join("ca")).unwrap();
        let state = ControllerState::new(ca, &dir.path().join("artifacts")).unwrap();
        // Stored by another writer (a restart, another controller): only the store knows it.
        state
            .store()
            .write(|tx| tx.save_spec(&spec("vm-a", 1, 4)))
            .unwrap();
        assert_eq!(state.plan_generation_of("vm-a", 1).unwrap(), Some(4));
        assert_eq!(state.plan_generations.get("vm-a", 1), Some(4), "remembered");
        // Published through the state: known without the store.
        state.set_desired_spec(spec("vm-a", 2, 5));
        assert_eq!(state.plan_generations.get("vm-a", 2), Some(5));
        assert_eq!(state.plan_generation_of("vm-a", 2).unwrap(), Some(5));
        // Unknown stays unknown (and is asked again next time); plan generation 0 is unknown.
        assert_eq!(state.plan_generation_of("vm-a", 9).unwrap(), None);
        state.set_desired_spec(spec("vm-b", 1, 0));
        assert_eq!(state.plan_generation_of("vm-b", 1).unwrap(), None);
    }

    #[test]
    fn only_the_newest_generations_are_kept() {
        let kept = PlanGenerations::default();
        for g in 1..=20 {
            kept.note("vm-a", g, 100 + g);
        }
        assert_eq!(kept.get("vm-a", 20), Some(120));
        assert_eq!(
            kept.get("vm-a", 20 - KEPT_PER_MACHINE as u64 + 1),
            Some(113)
        );
        assert_eq!(kept.get("vm-a", 20 - KEPT_PER_MACHINE as u64), None);
    }
}
