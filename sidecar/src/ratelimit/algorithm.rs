//! Rate-limit algorithms as pure state machines.
