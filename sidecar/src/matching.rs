//! Request matching: compiled form of `RequestMatch`.
