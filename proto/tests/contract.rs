//! Contract tests for `apim-proto`: generated-code drift, a real tonic round trip, prost
//! encoding and the crate's hand-written helpers. One test binary keeps link time down.
#![allow(unexpected_cfgs)] // `apim_proto_regenerate`, see the crate docs

#[path = "contract/drift.rs"]
mod drift;

#[cfg(not(apim_proto_regenerate))]
#[path = "contract/encoding.rs"]
mod encoding;

#[cfg(not(apim_proto_regenerate))]
#[path = "contract/roundtrip.rs"]
mod roundtrip;

#[cfg(not(apim_proto_regenerate))]
#[path = "contract/sample.rs"]
mod sample;
