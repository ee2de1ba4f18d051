//! Counter keys: compiled form of `[KeySource]`.
