//! Certificates and the TLS listeners (in progress).
