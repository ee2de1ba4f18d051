//! The Bulwark operator as a library: the binary (`main.rs`) wires these together; tests and
//! benchmarks use them directly.
//!
//! - `cli`: flags. `admin`, `metrics`, `api_check`: the operator's own health and metrics.
//! - `index`: what the watches have seen (policies, injected pods, Services, EndpointSlices,
//!   Secrets), fed by `watch`; `compile` turns one pod's view of it into a `Snapshot`.
//! - `distribution`: the TLS policy stream sidecars hold (TokenReview-authenticated), and their
//!   acknowledgements. `status`: Accepted/Programmed conditions and Events, written by the leader
//!   (`leader`).
//! - `tls`: the operator's CA and serving certificate (kept in a Secret, rotated, `caBundle`
//!   patched); `inject`: the mutating admission webhook that adds the sidecar.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod api_check;
pub mod cli;
pub mod compile;
pub mod distribution;
pub mod index;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod status;
pub mod tls;
pub mod watch;
