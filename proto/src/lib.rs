//! The apimctl gRPC contract between the controller, its agents and the operator CLI.
