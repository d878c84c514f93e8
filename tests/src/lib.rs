//! End-to-end test support for apimctl: the simulated WSO2 distribution builder.
