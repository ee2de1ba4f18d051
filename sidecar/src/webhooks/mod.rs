//! Webhook delivery's parts that touch the outside: the admin API the app submits to
//! ([`api`]) and the HTTP transport deliveries go through ([`transport`]). What is delivered,
//! when, and how it is stored is the policy crate's ([`bulwark_policy::webhooks`]).

pub mod api;
pub mod transport;
