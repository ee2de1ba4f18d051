//! The Bulwark operator as a library: the binary (`main.rs`) wires these together; tests and
//! benchmarks use them directly.
//!
//! - `cli`: flags. `admin`, `metrics`, `api_check`: the operator's own health and metrics.
//! - `index`: what the watches have seen (policies, injected pods, Services, EndpointSlices,
//!   Secrets), fed by `watch`; `compile` turns one pod's view of it into a `Snapshot`.
//! - `distribution`: the TLS policy stream sidecars hold (TokenReview-authenticated), and their
//!   acknowledgements. `status`: Accepted/Programmed conditions and Events, written by the leader
//!   (`leader`); `deliveries`: a WebhookEndpoint's delivery counts and `Delivering` condition
//!   from its sidecars' reports (and when to disable it).
//! - `signing`: WebhookEndpoint signing keys across a rotation (the leader's key ledger).
//! - `tls`: the operator's CA and serving certificate (kept in a Secret, rotated, `caBundle`
//!   patched); `admission`: the webhooks' listener, routing `inject` (the mutating webhook that
//!   adds the sidecar) and `validate` (the validating webhook for what CRD schemas cannot check).
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod api_check;
pub mod cli;
pub mod compile;
pub mod deliveries;
pub mod distribution;
pub mod index;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod signing;
pub mod status;
pub mod tls;
pub mod validate;
pub mod watch;
