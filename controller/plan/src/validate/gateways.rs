//! What gateways need to receive APIs, and what analytics needs to publish: every gateway in an
//! environment, a unique 4.5 `gateway_id` per gateway node, and on 4.x analytics its endpoint and
//! token (3.x analytics has neither).

use std::collections::BTreeMap;

use crate::catalogue::{ProductLine, Role};
use crate::diag::Diagnostic;
use crate::plan::Plan;

/// Every gateway node is in at least one gateway environment: the control plane (3.x: the
/// publisher) deploys APIs to environments, so a gateway in none (4.x: `gateway_labels = []`)
/// never gets one.
pub(super) fn check_membership(p: &Plan, out: &mut Vec<Diagnostic>) {
    for n in p.nodes_of(Role::Gateway) {
        let member = p.gateway_environments.iter().any(|e| {
            e.gateways
                .as_ref()
                .is_none_or(|list| list.iter().any(|g| g.value == n.name.value))
        });
        if !member {
            let names: Vec<&str> = p
                .gateway_environments
                .iter()
                .map(|e| e.name.value.as_str())
                .collect();
            out.push(
                Diagnostic::error(
                    n.name.span.clone(),
                    format!(
                        "gateway node `{}` is in no gateway environment ({}): APIs are deployed \
                         to environments, so it would never get one",
                        n.name.value,
                        names.join(", ")
                    ),
                )
                .with_hint(format!(
                    "add \"{}\" to an environment's `gateways`, or leave `gateways` out to \
                     include every gateway",
                    n.name.value
                )),
            );
        }
    }
}

/// `[gateway_artifacts]` is for releases whose gateways keep APIs on their own disk (3.x).
pub(super) fn check_artifacts(p: &Plan, out: &mut Vec<Diagnostic>) {
    let Some(a) = &p.gateway_artifacts else {
        return;
    };
    if !p.cluster.product.value.gateways_share_artifacts() {
        out.push(
            Diagnostic::error(
                a.span.clone(),
                format!(
                    "[gateway_artifacts] applies to 3.x only: {} gateways pull their artifacts \
                     from the control plane",
                    p.cluster.product.value
                ),
            )
            .with_hint("remove the [gateway_artifacts] table"),
        );
    }
}

/// 4.5+: each gateway node's `gateway_id` (its name unless written) is unique and not empty.
pub(super) fn check_gateway_ids(p: &Plan, out: &mut Vec<Diagnostic>) {
    if p.cluster.product.value.line() != ProductLine::V45Split {
        return;
    }
    // id -> (node, whether the id is written)
    let mut seen: BTreeMap<&str, (&crate::plan::Node, bool)> = BTreeMap::new();
    for n in p.nodes_of(Role::Gateway) {
        let (id, written) = match &n.gateway_id {
            Some(id) => (id.value.as_str(), true),
            None => (n.name.value.as_str(), false),
        };
        if id.trim().is_empty() {
            out.push(Diagnostic::error(
                n.gateway_id
                    .as_ref()
                    .map_or(n.span.clone(), |g| g.span.clone()),
                format!("gateway node `{}` has an empty `gateway_id`", n.name.value),
            ));
            continue;
        }
        let Some((other, other_written)) = seen.get(id).copied() else {
            seen.insert(id, (n, written));
            continue;
        };
        let how = |written: bool| {
            if written {
                " (written)"
            } else {
                " (its name, by default)"
            }
        };
        // Point at a written id: names are unique, so at least one of the two is written.
        let span = match (&n.gateway_id, &other.gateway_id) {
            (Some(g), _) | (None, Some(g)) => g.span.clone(),
            (None, None) => n.name.span.clone(),
        };
        out.push(
            Diagnostic::error(
                span,
                format!(
                    "gateway_id `{id}` of gateway node `{}`{} is also the gateway_id of gateway \
                     node `{}`{}",
                    n.name.value,
                    how(written),
                    other.name.value,
                    how(other_written),
                ),
            )
            .with_hint(
                "each 4.5 gateway node reports its deployments under its own gateway_id \
                 (default: the node's name); give every gateway a different one",
            ),
        );
    }
}

/// `[analytics]`: on 4.x, `enabled = true` needs the cloud's `config_endpoint` and
/// `auth_token`; 3.x has neither (its gateways publish to an API-M Analytics server, whose
/// endpoints go into `[overrides]`).
pub(super) fn check_analytics(p: &Plan, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    let a = &p.analytics;
    if !product.has_cloud_analytics() {
        let written = [
            (
                "config_endpoint",
                a.config_endpoint.as_ref().map(|e| e.span.clone()),
            ),
            ("auth_token", a.auth_token.as_ref().map(|t| t.span.clone())),
        ];
        for (key, span) in written {
            if let Some(span) = span {
                out.push(
                    Diagnostic::error(
                        span,
                        format!(
                            "[analytics] `{key}` is a 4.x analytics-cloud setting; {product} \
                             publishes analytics to a WSO2 API-M Analytics server"
                        ),
                    )
                    .with_hint(
                        "remove it; set the analytics server's `store_api_url` and \
                         [[apim.analytics.url_group]] in [overrides]",
                    ),
                );
            }
        }
        if a.enabled {
            out.push(
                Diagnostic::warning(
                    a.enabled_span.clone(),
                    format!(
                        "[analytics] on {product} only turns `[apim.analytics] enable` on for the \
                         publisher, devportal and gateway nodes"
                    ),
                )
                .with_hint(
                    "point them at your API-M Analytics server with `store_api_url` and \
                     [[apim.analytics.url_group]] in [overrides]",
                ),
            );
        }
        return;
    }
    if !a.enabled {
        return;
    }
    let missing: Vec<&str> = [
        ("config_endpoint", a.config_endpoint.is_none()),
        ("auth_token", a.auth_token.is_none()),
    ]
    .into_iter()
    .filter_map(|(k, missing)| missing.then_some(k))
    .collect();
    if !missing.is_empty() {
        out.push(
            Diagnostic::error(
                a.enabled_span.clone(),
                format!(
                    "[analytics] enabled = true on {product} needs {}: the gateways publish to \
                     the analytics cloud with them",
                    missing
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            )
            .with_hint(
                "config_endpoint = \"https://analytics-event-auth.choreo.dev/auth/v1\", \
                 auth_token = { env = \"APIM_ANALYTICS_TOKEN\" }",
            ),
        );
    }
    if let Some(ep) = &a.config_endpoint
        && !ep.value.starts_with("https://")
    {
        out.push(Diagnostic::error(
            ep.span.clone(),
            format!(
                "[analytics] `config_endpoint` `{}` must be an https:// URL",
                ep.value
            ),
        ));
    }
}
