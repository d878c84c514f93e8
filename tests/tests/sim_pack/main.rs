//! The simulated WSO2 distributions behave like the real ones where an agent can look:
//! zip layout, keystores, profileSetup.sh, the start scripts' contract, the simulated JVM's
//! log lines, ports, `/services/Version`, the gateway health check, config errors and peers.

//! (One test binary, a module per area, to keep link time down.)

mod layout;
mod network;
mod profiles;
mod scripts;
mod server;
mod support;
