//! The Bulwark sidecar as a library: the binary (`main.rs`) wires these modules into a Pingora
//! server. Policy modules (`matching`, `keys`, `ratelimit`, ...) know nothing of Pingora: they
//! take a [`request::RequestView`] and return decisions, so they are unit-tested and benchmarked
//! without a proxy.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod compile;
pub mod config;
pub mod deny;
pub mod dns;
pub mod global;
pub mod jwt;
pub mod keys;
pub mod matching;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod ratelimit;
pub mod request;
