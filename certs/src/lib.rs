//! Certificates for apimctl: the control-plane CA and the product PKI.
