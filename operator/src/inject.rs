//! The injection webhook (in progress).
