//! Rate limiting: algorithms (pure), the local counter store, and the compiled
//! `RateLimitPolicy` engine that decides each request.

pub mod algorithm;
pub mod engine;
pub mod metrics;
pub mod redis_counters;
pub mod store;
pub mod sweeper;
