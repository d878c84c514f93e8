//! Where the cluster runs and how it is reached: `[hosts]`, `[[machines]]`, `[[nodes]]`,
//! `[load_balancers]` and `[[gateway_environments]]`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{SPAN0, choice, ip};
use crate::catalogue::defaults;
use crate::catalogue::{Product, Role};
use crate::diag::{Diagnostic, did_you_mean};
use crate::plan::walk::Fields;
use crate::plan::{At, GatewayEnvironment, LoadBalancer, Machine, Node};

/// `[hosts]`: extra `name = "address"` lines for every machine's hosts block.
pub(super) fn hosts(
    root: &mut Fields<'_, '_>,
    out: &mut Vec<Diagnostic>,
) -> Vec<(At<String>, At<IpAddr>)> {
    let mut hosts = Vec::new();
    let Some(h) = root.table("hosts", out) else {
        return hosts;
    };
    for (name, v) in h.entries() {
        match v.get_ref().as_str().map(str::parse::<IpAddr>) {
            Some(Ok(addr)) => hosts.push((name, At::new(addr, v.span()))),
            _ => out.push(Diagnostic::error(
                v.span(),
                format!("`hosts.\"{}\"` must be an IP address string", name.value),
            )),
        }
    }
    hosts
}

/// `[[machines]]`.
pub(super) fn machines(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Vec<Machine> {
    let mut machines = Vec::new();
    for mut m in root.tables("machines", out) {
        let name = m.req_string("name", out, "name = \"vm-gw-1\"");
        let address = ip(&mut m, "address", out);
        if m.key_span("address").is_none() {
            m.missing("address", out, "address = \"10.0.0.11\"");
        }
        let java_home = m.string("java_home", out);
        let install_dir = m.string("install_dir", out);
        let run_as = m.string("run_as", out);
        let span = m.span.clone();
        m.finish(out);
        if let (Some(name), Some(address)) = (name, address) {
            machines.push(Machine {
                name,
                address,
                java_home,
                install_dir,
                run_as,
                span,
            });
        }
    }
    machines
}

/// `[[nodes]]`.
pub(super) fn nodes(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for mut n in root.tables("nodes", out) {
        let name = n.req_string("name", out, "name = \"gw-1\"");
        let machine = n.req_string("machine", out, "the name of a [[machines]] entry");
        let role = n
            .req_string("role", out, "role = \"gateway\"")
            .and_then(|r| match Role::parse(&r.value) {
                Some(role) => Some(At::new(role, r.span)),
                None => {
                    let names = Role::ALL.map(Role::as_str);
                    let mut d =
                        Diagnostic::error(r.span.clone(), format!("unknown role `{}`", r.value));
                    d = match did_you_mean(&r.value, names) {
                        Some(near) => d.with_hint(format!("did you mean `{near}`?")),
                        None => d.with_hint(format!("roles: {}", names.join(", "))),
                    };
                    out.push(d);
                    None
                }
            });
        let hostname = n.req_string(
            "hostname",
            out,
            "the node's own DNS name, e.g. \"gw1.wso2.com\"",
        );
        let written = n.key_span("offset").is_some();
        let parsed = n.int("offset", 0..=60000, out);
        let offset_valid = parsed.is_some() || !written;
        let offset = parsed
            .map(|o| At::new(o.value as u16, o.span))
            .unwrap_or_else(|| At::new(0, n.span.clone()));
        let gateway_id = n.string("gateway_id", out);
        let span = n.span.clone();
        n.finish(out);
        if let (Some(name), Some(machine), Some(role), Some(hostname)) =
            (name, machine, role, hostname)
        {
            nodes.push(Node {
                name,
                machine,
                role,
                hostname,
                offset,
                offset_valid,
                gateway_id,
                span,
            });
        }
    }
    nodes
}

/// `[load_balancers]`: `role = "hostname"` or `role = { hostname, address }` or
/// `role = { hostname, machine }` (apimctl installs the balancer on that machine).
pub(super) fn load_balancers(
    root: &mut Fields<'_, '_>,
    out: &mut Vec<Diagnostic>,
) -> BTreeMap<Role, LoadBalancer> {
    let mut load_balancers = BTreeMap::new();
    let Some(lbs) = root.table("load_balancers", out) else {
        return load_balancers;
    };
    for (key, v) in lbs.entries() {
        let Some(role) = Role::parse(&key.value) else {
            let names = Role::ALL.map(Role::as_str);
            let mut d = Diagnostic::error(
                key.span.clone(),
                format!("`load_balancers.{}` is not a role", key.value),
            );
            if let Some(near) = did_you_mean(&key.value, names) {
                d = d.with_hint(format!("did you mean `{near}`?"));
            }
            out.push(d);
            continue;
        };
        let role = At::new(role, key.span.clone());
        if let Some(h) = v.get_ref().as_str() {
            load_balancers.insert(
                role.value,
                LoadBalancer {
                    role,
                    hostname: At::new(h.to_string(), v.span()),
                    address: None,
                    machine: None,
                },
            );
        } else if let Some(t) = v.get_ref().as_table() {
            let mut f = Fields::new(t, format!("`load_balancers.{}`", key.value), v.span());
            let hostname = f.req_string("hostname", out, "hostname = \"gw.wso2.com\"");
            let address = ip(&mut f, "address", out);
            let machine = f.string("machine", out);
            f.finish(out);
            if let (Some(a), Some(m)) = (&address, &machine) {
                out.push(
                    Diagnostic::error(
                        a.span.clone(),
                        format!(
                            "`load_balancers.{}` has both `address` and `machine`",
                            key.value
                        ),
                    )
                    .with_hint(format!(
                        "the balancer runs on machine `{}` and takes its address: remove `address`",
                        m.value
                    )),
                );
            }
            if let Some(hostname) = hostname {
                load_balancers.insert(
                    role.value,
                    LoadBalancer {
                        role,
                        hostname,
                        address,
                        machine,
                    },
                );
            }
        } else {
            out.push(Diagnostic::error(
                v.span(),
                format!(
                    "`load_balancers.{}` must be a host name, {{ hostname, address }} or {{ hostname, machine }}",
                    key.value
                ),
            ));
        }
    }
    load_balancers
}

/// `[[gateway_environments]]`; without any, the one environment the packs define.
pub(super) fn gateway_environments(
    root: &mut Fields<'_, '_>,
    product: Option<Product>,
    out: &mut Vec<Diagnostic>,
) -> Vec<GatewayEnvironment> {
    let mut environments = Vec::new();
    let types = defaults::GATEWAY_ENVIRONMENT_TYPES.map(|t| (t, t));
    for mut g in root.tables("gateway_environments", out) {
        let span = g.span.clone();
        let name = g.req_string("name", out, "name = \"Default\"");
        let env_type = choice(&mut g, "type", &types, types[0].1, out);
        let description = g
            .string("description", out)
            .map(|d| d.value)
            .unwrap_or_else(|| defaults::gateway_environment_description(env_type.value).into());
        let display_in_api_console = g
            .bool("display_in_api_console", out)
            .is_none_or(|b| b.value);
        let show_as_token_endpoint_url = g
            .bool("show_as_token_endpoint_url", out)
            .is_none_or(|b| b.value);
        let label = g.string("label", out);
        let gateways = g.strings("gateways", out);
        let hostname = g.string("hostname", out);
        g.finish(out);
        if let (Some(name), Some(label)) = (&name, label) {
            label_is_the_name(name, &label, out);
        }
        if let Some(name) = name {
            environments.push(GatewayEnvironment {
                name,
                env_type: At::new(env_type.value.to_string(), env_type.span),
                description,
                display_in_api_console,
                show_as_token_endpoint_url,
                gateways,
                hostname,
                span,
            });
        }
    }
    if environments.is_empty()
        && let Some(product) = product
    {
        let env_type = defaults::GATEWAY_ENVIRONMENT_TYPES[0];
        environments.push(GatewayEnvironment {
            name: At::new(defaults::gateway_environment_name(product).into(), SPAN0),
            env_type: At::new(env_type.into(), SPAN0),
            description: defaults::gateway_environment_description(env_type).into(),
            display_in_api_console: true,
            show_as_token_endpoint_url: true,
            gateways: None,
            hostname: None,
            span: SPAN0,
        });
    }
    environments
}

/// A `label` must be the environment's name: 4.x gateways subscribe to `gateway_labels`, and the
/// control plane deploys an API to an environment by its name, so a gateway subscribed to any
/// other label never receives an API.
fn label_is_the_name(name: &At<String>, label: &At<String>, out: &mut Vec<Diagnostic>) {
    if label.value == name.value {
        return;
    }
    out.push(
        Diagnostic::error(
            label.span.clone(),
            format!(
                "gateway environment `{}` has label `{}`: the control plane deploys APIs to an \
                 environment by its name, so gateways subscribed to `{}` would never get an API",
                name.value, label.value, label.value
            ),
        )
        .with_hint(format!(
            "remove `label` (gateways subscribe to the environment's name) or write label = \"{}\"",
            name.value
        )),
    );
}
