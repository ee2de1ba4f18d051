//! The cost of one local rate-limit decision, without the proxy: match, key, counter lookup and
//! algorithm, with 100,000 distinct keys live in the store (the target: <= 100 ns).
//!
//!     cargo bench -p bulwark-sidecar --bench decision

use std::{hint::black_box, net::IpAddr, sync::Arc};

use bulwark_api::{
    crd::rate_limit::RateLimitPolicySpec,
    snapshot::{PolicySource, Sourced},
};
use bulwark_sidecar::{
    jwt::JwtKeys,
    metrics::Metrics,
    policy::PolicyEnv,
    ratelimit::{engine::RateLimits, store::LocalStore},
    request::RequestView,
};
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;

const KEYS: u32 = 100_000;

fn limits(algorithm: &str) -> RateLimits {
    let spec: RateLimitPolicySpec = serde_yaml::from_str(&format!(
        "
rules:
- name: per-ip
  key: [{{type: ClientIP}}]
  algorithm: {algorithm}
  rates: [{{limit: 1000000, window: 1s}}]
"
    ))
    .unwrap();
    let policy = Sourced {
        source: PolicySource {
            namespace: "bench".into(),
            name: "p".into(),
            generation: 1,
        },
        spec,
    };
    RateLimits::compile(
        &[policy],
        &JwtKeys::new(),
        &PolicyEnv::local_only(Arc::new(Metrics::new().unwrap())),
    )
    .unwrap()
}

fn request<'a>(headers: &'a HeaderMap, client: IpAddr) -> RequestView<'a> {
    RequestView {
        method: "GET",
        path: "/",
        query: None,
        host: None,
        headers,
        client_ip: Some(client),
    }
}

/// The `i`th client: computed, not read from a table, so the benchmark adds no cache miss of
/// its own to the decision's.
fn client(i: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000u32 + i).to_be_bytes())
}

/// One group: every algorithm deciding requests from `clients` distinct clients, taken with a
/// prime stride so no two consecutive requests share a key (all of them already have a counter).
fn group(c: &mut Criterion, name: &str, clients: u32) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group(name);
    for algorithm in ["TokenBucket", "SlidingWindow", "FixedWindow"] {
        let limits = limits(algorithm);
        let store = LocalStore::new(64, 1_000_000);
        let mut now = 1_700_000_000_000_000_000u64;
        for i in 0..clients {
            limits.decide(&request(&headers, client(i)), &store, now);
        }
        assert_eq!(store.len(), clients as usize);
        let mut i = 0u32;
        group.bench_function(algorithm, |b| {
            b.iter(|| {
                i = (i + 7919) % clients;
                now += 1_000;
                black_box(limits.decide(black_box(&request(&headers, client(i))), &store, now))
            })
        });
    }
    group.finish();
}

/// The machine's floor for the 100k-key case: one load whose address depends on the previous
/// one, over a working set the size of 100k counters' map slots (~5 MB), as a decision on a
/// cold key must wait for its counter. Lines are visited in one random cycle (Sattolo's
/// shuffle), so the prefetcher cannot guess the next one.
fn memory_latency(c: &mut Criterion) {
    const LINES: usize = 5 * 1024 * 1024 / 64;
    let mut order: Vec<usize> = (0..LINES).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..LINES).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % i as u64) as usize);
    }
    // One 64-byte line per element; its first word is the index of the next line.
    let mut next = vec![[0usize; 8]; LINES];
    for (i, &line) in order.iter().enumerate() {
        next[line][0] = order[(i + 1) % LINES];
    }
    let mut at = order[0];
    c.bench_function("memory: one dependent load over 5 MB", |b| {
        b.iter(|| {
            at = next[at][0];
            black_box(at)
        })
    });
}

fn bench(c: &mut Criterion) {
    group(c, "local decision, 100k keys", KEYS);
    // One hot key: the compute part alone, with the counter in cache.
    group(c, "local decision, 1 key", 1);
    memory_latency(c);
}

criterion_group!(benches, bench);
criterion_main!(benches);
