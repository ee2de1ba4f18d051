//! The compiled per-pod snapshot: the contract between the operator and the sidecar.
