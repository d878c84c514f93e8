//! [`Member`]: the controllers of the cluster as the membership table shows them, for
//! `OperatorService.ListControllers` (`apimctl controllers`).
//!
//! With several controllers on one store, each writes a heartbeat row and one holds the rollout
//! lease ([`super::ha`]); on the embedded store this controller is the only member and leads.

/// One controller of the cluster as the membership table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id, e.g. "ctl-a" (the configuration's `id`, by default the hostname).
    pub id: String,
    /// What agents and operators dial, e.g. "10.0.0.5:7443"; empty when not advertised.
    pub address: String,
    /// The controller build's version (its `CARGO_PKG_VERSION`), so mixed versions show.
    pub version: String,
    /// When it started, unix milliseconds.
    pub started_at_ms: i64,
    /// When it last wrote its heartbeat, unix milliseconds (a stale one means it is gone).
    pub heartbeat_ms: i64,
    /// It holds the rollout lease now: the one controller that leads rollouts.
    pub leader: bool,
    /// How far its view is behind the store, in milliseconds (0 for the leader).
    pub lag_ms: i64,
    /// It is the controller answering this call.
    pub this: bool,
}

#[cfg(test)]
mod tests {
    use super::super::ControllerState;

    fn now_ms() -> i64 {
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// A lone controller is the one member, leads, lags nothing and is the one answering.
    #[test]
    fn a_lone_controller_is_the_leading_member() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = apim_certs::ControlPlaneCa::load_or_create(&dir.path().join("ca")).expect("ca");
        let state = ControllerState::new(ca, &dir.path().join("artifacts")).expect("state");
        let before = now_ms();
        let members = state.members().expect("members");
        assert_eq!(members.len(), 1, "{members:?}");
        let me = &members[0];
        assert!(me.leader && me.this, "{me:?}");
        assert_eq!(me.lag_ms, 0);
        assert_eq!(me.version, env!("CARGO_PKG_VERSION"));
        assert!(
            me.heartbeat_ms >= before && me.started_at_ms <= me.heartbeat_ms,
            "{me:?}"
        );
    }
}
