//! End-to-end test support for apimctl: the simulated WSO2 distribution builder.
//!
//! Real WSO2 packs cannot be downloaded in the test environment, so the agent and the
//! end-to-end tests run against simulated packs that behave like the real ones in every way an
//! agent can observe:
//! - [`simpack`] builds the zips (layout, scripts, keystores, templates, webapps);
//! - [`fakejdk`] lays out a per-machine fake JDK whose `java` is the `apim-simjava` binary;
//! - [`sim`] is that binary's simulated Carbon server;
//! - [`cluster`] runs a whole cluster (controller, agents, simulated machines) as real
//!   processes on loopback, for the end-to-end tests, the quickstart and the benchmarks;
//! - [`netns`] gives each simulated machine its own network and mount namespace (opt-in:
//!   [`cluster::ClusterOptions::namespaces`]), for partitions, slow links and `/etc/hosts`;
//! - [`probe`] has small blocking helpers tests use to look at a running node.
//!
//! Typical use in a test (see `tests/sim_pack.rs` for complete ones):
//!
//! ```text
//! let pack = simpack::build_pack(PackKind::AllInOne, "4.2.0", dir, &PackOptions::default())?;
//! let ip = probe::loopback_for("my_test", 1);            // one 127.x.y.z per simulated VM
//! let machine = MachineSettings::new(ip.into(), dir.join("vm1/hosts"));
//! let jdk = make_fake_jdk(&dir.join("vm1/jdk"),
//!                         &JdkSettings::new(machine, env!("CARGO_BIN_EXE_apim-simjava")))?;
//! // unzip pack.path, run bin/profileSetup.sh, write repository/conf/deployment.toml, then
//! // JAVA_HOME=<jdk.home> sh bin/api-manager.sh start -DportOffset=N
//! // and wait for "WSO2 Carbon started in" in repository/logs/wso2carbon.log.
//! ```
//!
//! Test-only switches go in an `[apimsim]` table of the node's `deployment.toml` (the real
//! config mapper ignores unknown tables): `startup_delay_ms`, `never_ready = true`,
//! `exit_code = N` (+ `exit_after_ms`), `restart_requests = N` (exit 121 N times).

// The simulated packs' default.json is one large `serde_json::json!` literal.
#![recursion_limit = "512"]

pub mod cluster;
pub mod db;
pub mod fakejdk;
pub mod netns;
pub mod pgcluster;
pub mod probe;
pub mod sim;
pub mod simpack;
