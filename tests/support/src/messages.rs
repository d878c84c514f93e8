//! Agent messages tests send by hand on an agent stream, and a small spec to push.

use apim_proto::v1::{
    AgentMessage, Hello, HostsEntry, MachineFacts, MachineSpec, NodePhase, NodeSpec, NodeStatus,
    StatusReport, agent_message,
};

/// A small spec for `machine` with the given nodes.
pub fn spec(machine: &str, generation: u64, nodes: &[&str]) -> MachineSpec {
    MachineSpec {
        machine: machine.into(),
        generation,
        plan_generation: generation,
        hosts_block: vec![HostsEntry {
            address: "10.0.0.11".into(),
            names: vec!["km.wso2.com".into()],
        }],
        nodes: nodes
            .iter()
            .map(|n| NodeSpec {
                name: (*n).into(),
                role: "key-manager".into(),
                ..NodeSpec::default()
            })
            .collect(),
    }
}

/// A `Hello` from an agent holding generation `held`.
pub fn hello(held: u64) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_version: "test".into(),
            facts: Some(MachineFacts {
                hostname: "test-host".into(),
                cpus: 2,
                ..Default::default()
            }),
            held_generation: held,
        })),
    }
}

/// A status report naming `nodes`, all pending at `generation`.
pub fn report(generation: u64, nodes: &[&str]) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Status(StatusReport {
            generation,
            nodes: nodes
                .iter()
                .map(|n| NodeStatus {
                    node: (*n).into(),
                    phase: NodePhase::Pending as i32,
                    generation,
                    ..Default::default()
                })
                .collect(),
            facts: None,
        })),
    }
}
