//! Agent messages tests send by hand on an agent stream.

use apim_proto::v1::{
    AgentMessage, Hello, MachineFacts, NodePhase, NodeStatus, StatusReport, agent_message,
};

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
            destroy_error: String::new(),
            services: Vec::new(),
        })),
    }
}
