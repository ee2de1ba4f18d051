//! Rate limiting: algorithms, counter stores and the compiled `RateLimitPolicy` engine.

pub mod algorithm;
