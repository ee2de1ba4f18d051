//! Outbound webhook delivery: the app submits events to its sidecar (admin API, loopback); the
//! sidecar stores them durably, then delivers each to every WebhookEndpoint whose `eventTypes`
//! match, signed with Standard Webhooks signatures, retried on the endpoint's schedule, and
//! kept as a dead letter when every attempt failed (replayable).
//!
//! - [`endpoint`]: a snapshot's endpoints compiled (defaults, decoded keys);
//! - [`message`]: reading submissions (errors name the field), message ids;
//! - [`store`]: the durable queue (redb, group commit); [`shared`]: the queue of `scope: Global`
//!   endpoints, shared by their sidecars (Redis Streams);
//! - [`outbox`]: accept, dead letters, replay, status: what the admin API calls;
//! - [`dispatch`]: the background task that attempts due deliveries, and the [`dispatch::Transport`]
//!   the sidecar binary implements (HTTP, TLS, the SSRF guard);
//! - pure parts: [`event_type`] (filters), [`signature`], [`retry`] (what an attempt's result
//!   means), [`ssrf`] (which addresses are refused), [`queue`] (an endpoint's pending
//!   deliveries in memory).

pub mod dispatch;
pub mod endpoint;
pub mod event_type;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod queue;
pub mod retry;
pub mod shared;
pub mod signature;
pub mod ssrf;
pub mod store;

pub use endpoint::{Endpoint, Webhooks};

#[cfg(test)]
mod store_tests;
