//! What `Status` needs of a rollout's targets: its machines and their nodes' names. Kept apart
//! from the full target specs (tens of MiB with a thousand machines), which are decoded for the
//! engine only while their rollout is in flight and let go once a status sees it ended.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use apim_proto::v1::MachineSpec;

use super::ControllerState;
use crate::store::StoreError;

/// Per machine, its nodes' names in spec order.
pub type Layout = Arc<BTreeMap<String, Vec<String>>>;

/// The layout of the latest rollout asked, by rollout id.
pub(super) type LayoutCache = Mutex<Option<(String, Layout)>>;

/// The layout of `specs`.
pub fn layout_of<'a>(specs: impl IntoIterator<Item = &'a MachineSpec>) -> Layout {
    Arc::new(
        specs
            .into_iter()
            .map(|s| {
                let nodes = s.nodes.iter().map(|n| n.name.clone()).collect();
                (s.machine.clone(), nodes)
            })
            .collect(),
    )
}

impl ControllerState {
    /// The layout of rollout `id`'s targets (they never change once stored), remembered for
    /// the latest id asked. `active`: whether that rollout is in flight; once it is not, the
    /// engine needs its full targets no more and they are let go.
    pub fn rollout_layout(&self, id: &str, active: bool) -> Result<Layout, StoreError> {
        let lock = |m: &LayoutCache| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        let cached = lock(&self.layout).filter(|(cached, _)| cached == id);
        let layout = match cached {
            Some((_, l)) => l,
            None => {
                let full = if active {
                    Some(self.rollout_targets(id)?)
                } else {
                    self.cached_targets(id)
                };
                let l = match full {
                    Some(t) => layout_of(t.values()),
                    None => layout_of(
                        &self
                            .store
                            .read(|tx| tx.targets(id))?
                            .into_values()
                            .collect::<Vec<_>>(),
                    ),
                };
                *self
                    .layout
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((id.to_owned(), Arc::clone(&l)));
                l
            }
        };
        if !active {
            self.forget_targets(id);
        }
        Ok(layout)
    }
}

#[cfg(test)]
mod tests {
    use apim_certs::ControlPlaneCa;
    use apim_proto::v1::NodeSpec;

    use super::*;

    fn spec(machine: &str, nodes: &[&str]) -> MachineSpec {
        MachineSpec {
            machine: machine.into(),
            nodes: nodes
                .iter()
                .map(|n| NodeSpec {
                    name: (*n).into(),
                    ..NodeSpec::default()
                })
                .collect(),
            ..MachineSpec::default()
        }
    }

    #[test]
    fn an_ended_rollouts_full_targets_are_let_go_and_its_layout_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ControlPlaneCa::load_or_create(&dir.path().join("ca")).unwrap();
        let state = ControllerState::new(ca, &dir.path().join("artifacts")).unwrap();
        let specs = [spec("vm-b", &["gw-1", "gw-2"]), spec("vm-a", &["km-1"])];
        state
            .store()
            .write(|tx| tx.save_targets("rollout-1", &specs))
            .unwrap();
        let want: BTreeMap<String, Vec<String>> = [
            ("vm-a".to_string(), vec!["km-1".to_string()]),
            (
                "vm-b".to_string(),
                vec!["gw-1".to_string(), "gw-2".to_string()],
            ),
        ]
        .into();
        // In flight: the engine's full targets are decoded (and kept) on the way.
        assert_eq!(*state.rollout_layout("rollout-1", true).unwrap(), want);
        assert!(state.cached_targets("rollout-1").is_some());
        // Ended: the layout stays, the full targets go.
        assert_eq!(*state.rollout_layout("rollout-1", false).unwrap(), want);
        assert!(state.cached_targets("rollout-1").is_none());
        // A later rollout's layout, asked once it ended, never keeps its full targets.
        state
            .store()
            .write(|tx| tx.save_targets("rollout-2", &specs[..1]))
            .unwrap();
        let l = state.rollout_layout("rollout-2", false).unwrap();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["vm-b"]);
        assert!(state.cached_targets("rollout-2").is_none());
    }
}
