//! Quotas: long-window budgets per key (hour to month, calendar-aligned), persisted.
//!
//! Pure parts: `period` (calendar arithmetic), `usage` (in-memory usage), `engine` (decisions
//! over a [`crate::request::RequestView`]). I/O around them: `store` (the redb file), `flush`
//! (the background writer), `global` (+ `quota.lua`: Redis counters), `admin` (`GET /quota`).

pub mod admin;
pub mod engine;
pub mod flush;
pub mod metrics;
pub mod period;
pub mod redis_counters;
pub mod store;
pub mod usage;
