//! The simulated WSO2 distributions behave like the real ones where an agent can look:
//! zip layout, keystores, profileSetup.sh, the start scripts' contract, the simulated JVM's
//! log lines, ports, `/services/Version`, the gateway health check, config errors and peers;
//! the key catalogue and pack defaults, the launcher's `-Dprofile`, the secure vault, and the
//! JDBC databases (driver jar, login, the pack's dbscripts tables).

//! (One test binary, a module per area, to keep link time down.)

mod databases;
mod launcher;
mod layout;
mod network;
mod packdefaults;
mod ports;
mod profiles;
mod scripts;
mod server;
mod support;
mod vault;
