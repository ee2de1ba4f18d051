//! Feature flags, evaluated as flagd evaluates them (docs/feature-flags.md): the same flag
//! definitions give the same value, variant, reason and error code. No proxy types here: the
//! OFREP API and the proxy's gates call [`FlagSet`] and [`CompiledFlag::evaluate`].
//!
//! - [`compile`]: `FeatureFlag` specs into a [`FlagSet`], targeting parsed once.
//! - [`evaluate`]: one flag against one context.
//! - [`ofrep`]: the OFREP API's answers.
//! - [`gating`]: what flags do to proxied requests (gates, injected headers).
//! - [`operators`]: flagd's JsonLogic operators; [`semver`] and [`go_text`] reproduce the Go
//!   behaviour they depend on.

pub mod compile;
pub mod evaluate;
pub mod gating;
mod go_text;
pub mod metrics;
pub mod ofrep;
pub mod operators;
mod semver;

pub use compile::{CompiledFlag, FlagSet, Targeting};
pub use evaluate::{Context, ErrorCode, Reason, Resolution};
pub use gating::{FlagGates, GateDecision};

#[cfg(test)]
mod tests;
