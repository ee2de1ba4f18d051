//! Bulwark's API: the custom resources users apply (`bulwark.dev/v1alpha1`) and the compiled
//! [`Snapshot`](snapshot::Snapshot) the operator streams to each sidecar.
//!
//! This crate does no I/O. Doc comments on CRD fields become the OpenAPI descriptions that
//! `kubectl explain` prints, so they are written for users, not for Rust readers.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]
// `#[kube(printcolumn(type_ = ..), printcolumn(type_ = ..))]` repeats keys by design.
#![allow(clippy::duplicated_attributes)]

pub mod crd;
pub mod distribution;
pub mod duration;
pub mod snapshot;
pub mod validation;

pub use duration::Duration;

/// The API group of every Bulwark custom resource.
pub const GROUP: &str = "bulwark.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
