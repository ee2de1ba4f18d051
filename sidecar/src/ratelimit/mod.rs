//! Rate limiting: algorithms (pure), the local counter store, and the compiled
//! `RateLimitPolicy` engine that decides each request.

pub mod algorithm;
pub mod engine;
pub mod global;
pub mod store;
pub mod sweeper;
