//! Integration tests of the offline half of apimctl: golden renders against the WSO2 guides'
//! samples, one failing test per validation rule, CLI behaviour, and render properties.
//! (One test binary, to keep link time down on small CI machines.)

mod artifacts;
mod balancers;
mod databases;
mod golden;
mod lint;
mod props;
mod provided;
mod rules;
mod settings;
mod vault;
