//! Standalone configuration loading: one file of N `RateLimitPolicy` documents parsed into a
//! snapshot and compiled, as the sidecar does at start and on every change of `--config-dir`.
//! The target: 10,000 policies in under 2 s, growing linearly.
//!
//!     cargo bench -p bulwark-sidecar --bench config_load

use std::hint::black_box;

use bulwark_policy::{compile::CompileEnv, compiled::CompiledPolicy, metrics::PolicyMetrics};
use bulwark_sidecar::config::files::{Loaded, load_text};
use criterion::{Criterion, criterion_group, criterion_main};

fn policies(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: api-{i}, namespace: shop}}
spec:
  rules:
  - name: per-key
    match: {{path: {{type: PathPrefix, value: /api/{i}}}}}
    key: [{{type: Header, name: x-api-key}}]
    rates: [{{limit: 100, window: 1m}}]
"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn load_and_compile(text: &str) -> usize {
    let mut loaded = Loaded::new();
    load_text("policies.yaml", text, &mut loaded).unwrap();
    let metrics = PolicyMetrics::unregistered();
    let compiled = CompiledPolicy::compile(loaded.snapshot, CompileEnv::local(&metrics)).unwrap();
    compiled.snapshot.rate_limits.len()
}

fn config_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("config load: one file, parse + compile");
    group.sample_size(10);
    for count in [1_000, 10_000] {
        let text = policies(count);
        group.bench_function(format!("{count} policies"), |b| {
            b.iter(|| assert_eq!(load_and_compile(black_box(&text)), count))
        });
    }
    group.finish();
}

criterion_group!(benches, config_load);
criterion_main!(benches);
