//! The controller's gRPC server (mTLS; enrollment is the only call allowed without a client
//! certificate).
