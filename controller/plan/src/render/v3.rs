//! The 3.x wiring: five profiles (key manager, traffic manager, publisher, developer portal,
//! gateway), as in the 3.x distributed deployment guide, step 6.

use super::doc::{Doc, arr, s};
use super::wiring::{
    Wiring, cache_invalidation, gateway_environments, key_manager_client, revoke_endpoint,
    throttling_client, token_revocation,
};
use crate::catalogue::{Port, Role, layout};
use crate::plan::{Node, Plan};

/// The five-profile 3.x wiring (the 3.x distributed deployment guide, step 6).
pub(super) fn v3_role(plan: &Plan, node: &Node, d: &mut Doc, w: &mut Wiring<'_>) {
    let role = node.role.value;
    match role {
        Role::KeyManager => {
            throttling_client(d, w, false, false);
            let tm = w.mgmt(Role::TrafficManager);
            token_revocation(d, &tm);
            cache_invalidation(d, role);
        }
        Role::TrafficManager => {
            key_manager_client(d, w, Role::KeyManager, false);
            revoke_endpoint(d, w, Role::KeyManager);
            let peers = w.peers("tcp", Port::Amqp);
            if !peers.is_empty() {
                d.set("apim.throttling.event_duplicate_url", arr(peers));
            }
        }
        Role::Publisher => {
            gateway_environments(d, plan, w, true);
            throttling_client(d, w, true, true);
            let devportal = w.mgmt(Role::Devportal);
            d.set(
                "apim.devportal.url",
                s(&format!("{devportal}{}", layout::DEVPORTAL_PATH)),
            );
            key_manager_client(d, w, Role::KeyManager, false);
            cache_invalidation(d, role);
        }
        Role::Devportal => {
            gateway_environments(d, plan, w, false);
            key_manager_client(d, w, Role::KeyManager, false);
            revoke_endpoint(d, w, Role::KeyManager);
            throttling_client(d, w, false, false);
            cache_invalidation(d, role);
        }
        Role::Gateway => {
            key_manager_client(d, w, Role::KeyManager, false);
            throttling_client(d, w, true, false);
        }
        Role::ControlPlane => {}
    }
}
