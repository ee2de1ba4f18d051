//! Bulwark's policy logic: a snapshot compiled into decisions, and the state that outlives it.
//!
//! No proxy types here (the crate does not depend on Pingora): the sidecar binary builds a
//! [`request::RequestView`] per request, asks [`runtime::Runtime::admit`] and carries out the
//! [`admission::Admission`]. So everything here is unit-tested, property-tested and benchmarked
//! without a proxy.
//!
//! The flow is one way: snapshot → [`runtime::Runtime::compile`] (pure) →
//! [`runtime::Runtime::install`] (reconciles connections and [`state`]) → admit →
//! the proxy's phases → [`respond`] for anything the sidecar answers itself.
//!
//! Shared parts: `request`, `matching`, `keys`, `jwt`, `compile`, `respond`, `state`,
//! `redis_client`, `metrics`, `task`, `lock`, `clock`. Features, each in its folder:
//! `ratelimit/`, `quota/`, `flags/`, `failover/`, `webhooks/`.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admission;
pub mod clock;
pub mod compile;
pub mod compiled;
pub mod failover;
pub mod flags;
pub mod grpc;
pub mod jwt;
pub mod keys;
pub mod lock;
pub mod matching;
pub mod metrics;
pub mod private_db;
pub mod quota;
pub mod ratelimit;
pub mod redis_client;
pub mod request;
pub mod respond;
pub mod runtime;
pub mod state;
pub mod task;
pub mod webhooks;
