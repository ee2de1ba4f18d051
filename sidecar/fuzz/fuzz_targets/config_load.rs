//! Standalone configuration text (YAML, any bytes): loading and compiling never panic, and a
//! file that loads either compiles or is refused with an error.
#![no_main]

use bulwark_policy::{compile::CompileEnv, compiled::CompiledPolicy, metrics::PolicyMetrics};
use bulwark_sidecar::config::files::{Loaded, load_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut loaded = Loaded::new();
    if load_text("fuzz.yaml", &text, &mut loaded).is_ok() {
        let metrics = PolicyMetrics::unregistered();
        let _ = CompiledPolicy::compile(loaded.snapshot, CompileEnv::local(&metrics));
    }
});
