//! The controller's gRPC server over real TCP (127.0.0.1:0) and real TLS 1.3: authorization of
//! every RPC, enrollment with join tokens (incl. a man in the middle), the agent's stream with
//! automatic certificate renewal, revocation, and artifacts. Clients are the agent crate's own
//! enrollment and mTLS code. (One test binary, to keep link time down.)

mod artifacts;
mod authz;
mod enrollment;
mod failover;
mod folders;
mod health;
mod logs;
mod session;
