//! A snapshot from the operator stream (JSON, any bytes): decoding and compiling never panic.
#![no_main]

use bulwark_api::snapshot::Snapshot;
use bulwark_policy::{compile::CompileEnv, compiled::CompiledPolicy, metrics::PolicyMetrics};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = serde_json::from_slice::<Snapshot>(data) {
        let metrics = PolicyMetrics::unregistered();
        let _ = CompiledPolicy::compile(snapshot, CompileEnv::local(&metrics));
    }
});
