//! The apimctl agent: converges one VM to the machine spec the controller streams to it.
//!
//! The agent is a faithful executor of a typed spec: every WSO2 fact (what to write, how to
//! start a server, how to recognise it and when it is ready) arrives in the `NodeSpec`; the
//! agent knows only how to touch a machine. Two layers:
//!
//! | module | job |
//! | --- | --- |
//! | [`exec`] | OS effects: unpack and install, hosts block, processes, health probes, keystores, ledger, facts |
//! | [`daemon`] | identity, the link to the controller, fetch, converge, supervise, report, the main loop |
//!
//! The `apim-agent` binary parses its configuration and calls [`daemon::run`].

pub mod daemon;
pub mod exec;
