//! The Bulwark sidecar as a library: the binary (`main.rs`) wires these into a Pingora server.
//!
//! This crate holds what touches the proxy and the outside: the listeners (`listener`: Pingora
//! phases, one reply writer), the admin router, the policy sources (`config`: files, the
//! operator stream, the last good snapshot on disk), DNS, the failover health checks, metrics registration, flags, and
//! the adapter that runs the features' background tasks as services. The policy logic itself
//! is the `bulwark-policy` crate, which has no Pingora dependency.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod dns;
pub mod flagd_api;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod services;
pub mod shutdown;
pub mod webhooks;
