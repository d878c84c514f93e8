//! Defaults the pack ships that a node's role cannot do without: a `deployment.toml` that drops
//! one of them keeps the simulated server from ever becoming ready.
//!
//! The real product does not refuse to start in these cases: it starts and silently loses a
//! function the role exists for. The simulator turns that silent loss into a readiness failure
//! (an ERROR line from its own `apimsim.PackDefaults` logger, no "WSO2 Carbon started in", no
//! ports), so a renderer that drops pack defaults fails the end-to-end tests instead of shipping
//! a broken node. The defaults checked, per role, and why:
//!
//! - **`[[event_handler]] name = "userPostSelfRegistration"`, `subscriptions` containing
//!   `POST_ADD_USER`** — key managers (every release), 3.x/4.0–4.1 devportals, 4.x control
//!   planes (4.5 ACP included) and all-in-one nodes: the roles whose shipped files carry it.
//!   carbon-apimgt's `UserPostSelfRegistrationHandler` (handler name `userPostSelfRegistration`)
//!   runs the sign-up workflow and gives a self-signed-up user the `Internal/subscriber` role on
//!   `POST_ADD_USER`; the identity framework's `AbstractEventHandler.canHandle` returns false
//!   for a handler with no module configuration, so without this entry self-signed-up users get
//!   no subscriber role and cannot log in to the Developer Portal (the symptom reported in
//!   product-apim#9774 and the docs-apim self sign-up pages). No log line marks it.
//! - **`[service_provider] sp_name_regex`** — all-in-one nodes and 4.x/4.5 control planes (the
//!   all-in-one and ACP `deployment.toml` and the 4.x `control-plane.toml` carry it; no key
//!   manager, devportal or publisher template does, and `default.json` has no default for it).
//!   API-M names the service provider of every application's keys after the application; the
//!   shipped pattern admits whitespace (`\s`), the identity layer's own does not.
//! - **`[apim.key_manager] enable_apikey_subscription_validation`** — 4.2 all-in-one only (only
//!   the 4.2 shipped `deployment.toml` carries it, added by product-apim#13075 to close
//!   api-manager#966: "Without adding this configuration, API keys can be used even after
//!   unsubscribing the API or deleting the application").
//! - **`[apim.sync_runtime_artifacts.gateway] gateway_labels`** — 4.x and 4.5 gateways (every
//!   4.x gateway file carries `["Default"]`): a gateway deploys the APIs of the environments
//!   whose labels it lists, so with no label it serves none.
//!
//! Traffic managers, 3.x publishers and 3.x gateways have no such default: their shipped files
//! carry nothing beyond wiring and keys the kernel defaults cover.

use toml::{Table, Value};

use super::roles::Role;
use crate::simpack::{PackKind, Release};

/// The logger name of the simulator's own refusal (not a product class: the product is silent).
pub const LOGGER: &str = "apimsim.PackDefaults";

/// One needed default and where it applies.
struct Needed {
    /// What the toml must contain, as written in the pack.
    what: &'static str,
    /// What the node loses without it.
    loss: &'static str,
    applies: fn(Role, Release, PackKind) -> bool,
    present: fn(&Table) -> bool,
}

fn get<'a>(table: &'a Table, dotted: &str) -> Option<&'a Value> {
    let mut parts = dotted.split('.');
    let mut cur = table.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

fn has_self_signup_handler(table: &Table) -> bool {
    let Some(Value::Array(handlers)) = table.get("event_handler") else {
        return false;
    };
    handlers.iter().filter_map(Value::as_table).any(|h| {
        h.get("name").and_then(Value::as_str) == Some("userPostSelfRegistration")
            && h.get("subscriptions")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|v| v.as_str() == Some("POST_ADD_USER")))
    })
}

const NEEDED: [Needed; 4] = [
    Needed {
        what: "[[event_handler]] name = \"userPostSelfRegistration\" subscriptions = [\"POST_ADD_USER\"]",
        loss: "self-signed-up users would get no Internal/subscriber role and could not log in to the Developer Portal",
        applies: |role, _, _| {
            matches!(
                role,
                Role::KeyManager | Role::DevPortal | Role::ControlPlane | Role::AllInOne
            )
        },
        present: has_self_signup_handler,
    },
    Needed {
        what: "[service_provider] sp_name_regex",
        loss: "applications whose names hold whitespace could not get keys (their service providers would be rejected)",
        applies: |role, _, _| matches!(role, Role::ControlPlane | Role::AllInOne),
        present: |t| {
            get(t, "service_provider.sp_name_regex")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        },
    },
    Needed {
        what: "[apim.key_manager] enable_apikey_subscription_validation",
        loss: "API keys would keep working after their subscription or application is deleted",
        applies: |role, release, _| role == Role::AllInOne && release == Release::V4_2,
        present: |t| get(t, "apim.key_manager.enable_apikey_subscription_validation").is_some(),
    },
    Needed {
        what: "[apim.sync_runtime_artifacts.gateway] gateway_labels",
        loss: "the gateway would deploy no API (it serves the environments whose labels it lists)",
        applies: |role, release, _| role == Role::Gateway && release >= Release::V4_0,
        present: |t| {
            get(t, "apim.sync_runtime_artifacts.gateway.gateway_labels")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        },
    },
];

/// The error lines for every needed default `table` lacks for `role` (empty: all present).
pub fn missing(role: Role, release: Release, kind: PackKind, table: &Table) -> Vec<String> {
    NEEDED
        .iter()
        .filter(|n| (n.applies)(role, release, kind) && !(n.present)(table))
        .map(|n| {
            format!(
                "deployment.toml lacks {}, which the pack ships for this role: {}. The simulated server will not become ready.",
                n.what, n.loss
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Table {
        text.parse().expect("toml")
    }

    #[test]
    fn roles_need_their_defaults() {
        let handler = "[[event_handler]]\nname = \"userPostSelfRegistration\"\nsubscriptions = [\"POST_ADD_USER\"]\n";
        let sp = "[service_provider]\nsp_name_regex = \"x\"\n";
        let km = missing(Role::KeyManager, Release::V3_2, PackKind::AllInOne, &t(""));
        assert_eq!(km.len(), 1);
        assert!(km[0].contains("userPostSelfRegistration"), "{km:?}");
        assert!(
            missing(
                Role::KeyManager,
                Release::V4_5,
                PackKind::ApiControlPlane,
                &t(handler)
            )
            .is_empty()
        );
        let wrong = "[[event_handler]]\nname = \"userPostSelfRegistration\"\nsubscriptions = [\"PRE_ADD_USER\"]\n";
        assert_eq!(
            missing(
                Role::DevPortal,
                Release::V3_2,
                PackKind::AllInOne,
                &t(wrong)
            )
            .len(),
            1
        );
        let cp = missing(
            Role::ControlPlane,
            Release::V4_2,
            PackKind::AllInOne,
            &t(handler),
        );
        assert!(cp.len() == 1 && cp[0].contains("sp_name_regex"), "{cp:?}");
        let aio42 = missing(
            Role::AllInOne,
            Release::V4_2,
            PackKind::AllInOne,
            &t(&format!("{handler}{sp}")),
        );
        assert!(aio42.len() == 1 && aio42[0].contains("enable_apikey_subscription_validation"));
        assert!(
            missing(
                Role::AllInOne,
                Release::V4_4,
                PackKind::AllInOne,
                &t(&format!("{handler}{sp}"))
            )
            .is_empty()
        );
        assert_eq!(
            missing(Role::Gateway, Release::V4_2, PackKind::AllInOne, &t("")).len(),
            1
        );
        assert!(missing(Role::Gateway, Release::V3_2, PackKind::AllInOne, &t("")).is_empty());
        assert!(
            missing(
                Role::TrafficManager,
                Release::V4_5,
                PackKind::TrafficManager,
                &t("")
            )
            .is_empty()
        );
        assert!(missing(Role::Publisher, Release::V3_2, PackKind::AllInOne, &t("")).is_empty());
    }
}
