//! Load balancers placed on machines (`[load_balancers.<role>] machine = "…"`): the machine
//! exists, and the ports the balancers on one machine listen on clash neither with each other
//! (a TCP `stream` listener cannot share a port; HTTP(S) listeners can, told apart by host name)
//! nor with the ports of the nodes on that machine.

use std::collections::BTreeMap;

use crate::catalogue::{self, balancer};
use crate::diag::{Diagnostic, did_you_mean};
use crate::plan::{Issuer, LoadBalancer, Plan};

/// Checks every placed balancer.
pub(super) fn check(p: &Plan, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    // (machine, port) -> (the first LB listening there, whether that listener is TCP).
    let mut taken: BTreeMap<(&str, u16), (&LoadBalancer, bool)> = BTreeMap::new();
    for lb in p.load_balancers.values() {
        let Some(m) = &lb.machine else { continue };
        if p.machine(&m.value).is_none() {
            let names: Vec<&str> = p.machines.iter().map(|m| m.name.value.as_str()).collect();
            let mut d = Diagnostic::error(
                m.span.clone(),
                format!(
                    "load balancer `{}` is placed on machine `{}`, which is not in [[machines]]",
                    lb.hostname.value, m.value
                ),
            );
            d = match did_you_mean(&m.value, names.iter().copied()) {
                Some(near) => d.with_hint(format!("did you mean `{near}`?")),
                None => d.with_hint("add a [[machines]] entry for it (it may run no node)"),
            };
            out.push(d);
            continue;
        }
        if p.tls.issuer.value != Issuer::ClusterCa {
            out.push(
                Diagnostic::error(
                    m.span.clone(),
                    format!(
                        "load balancer `{}` is installed by apimctl, whose certificate comes from the cluster CA, but [tls] issuer is not \"cluster-ca\"",
                        lb.hostname.value
                    ),
                )
                .with_hint("set [tls] issuer = \"cluster-ca\", or run the balancer yourself (give `address` instead of `machine`)"),
            );
        }
        for port in balancer::fronted_ports(product, lb.role.value) {
            let key = (m.value.as_str(), port.listen);
            match taken.get(&key) {
                Some((other, other_tcp)) if port.is_stream() || *other_tcp => {
                    out.push(
                        Diagnostic::error(
                            m.span.clone(),
                            format!(
                                "load balancers for `{}` and `{}` both listen on port {} of machine `{}`",
                                other.role.value, lb.role.value, port.listen, m.value
                            ),
                        )
                        .with_hint(
                            "a TCP (stream) port serves one role only: place one of them on another machine",
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    taken.insert(key, (lb, port.is_stream()));
                }
            }
        }
    }
    // A node on a balancer's machine must not listen where the balancer does.
    for n in p.nodes.iter().filter(|n| n.offset_valid) {
        for named in catalogue::all_ports(product, n.role.value) {
            let port = u32::from(named.base()) + u32::from(n.offset.value);
            let Ok(port) = u16::try_from(port) else { break };
            if let Some((lb, _)) = taken.get(&(n.machine.value.as_str(), port)) {
                out.push(
                    Diagnostic::error(
                        n.offset.span.clone(),
                        format!(
                            "node `{}` uses port {port} on machine `{}`, where the load balancer for `{}` listens",
                            n.name.value, n.machine.value, lb.role.value
                        ),
                    )
                    .with_hint("give the node another offset, or place the balancer on another machine"),
                );
            }
        }
    }
}
