//! Feature flags in process, without the proxy: one evaluation of a static flag, of a targeting
//! rule with three conditions, and of a fractional split (the issue's target: <= 1 µs each,
//! the request's context already parsed); and a gate's cost per request (target: <= 2 µs):
//! the same request through `FlagGates::decide` with a gate and header, against an empty set.
//!
//!     cargo bench -p bulwark-policy --bench flags

use std::hint::black_box;

use bulwark_api::{
    crd::FeatureFlagSpec,
    snapshot::{PolicySource, Sourced},
};
use bulwark_policy::{
    admission::Direction,
    compile::CompileEnv,
    flags::{Context, FlagGates, FlagSet},
    jwt::JwtKeys,
    metrics::PolicyMetrics,
    request::RequestView,
};
use criterion::{Criterion, criterion_group, criterion_main};
use datalogic_rs::bumpalo::Bump;
use http::{HeaderMap, HeaderValue};

const FLAGS: &str = r#"
flags:
  static:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
  three-rules:
    state: ENABLED
    variants: {"a": "a", "b": "b", "c": "c", "d": "d"}
    defaultVariant: "d"
    targeting:
      if:
      - {"ends_with": [{"var": "email"}, "@example.com"]}
      - "a"
      - {"in": [{"var": "country"}, ["DE", "FR", "NL"]]}
      - "b"
      - {"sem_ver": [{"var": "version"}, ">=", "2.1.0"]}
      - "c"
      - null
  split:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting: {"fractional": [["on", 20], ["off", 80]]}
context:
  targetingKey: {type: Header, name: x-user-id}
gates:
- name: split-routes
  match: {path: {type: PathPrefix, value: /checkout}}
  flag: split
  allowedVariants: ["on", "off"]
injectHeaders:
- flag: split
  header: x-flag-split
"#;

fn spec() -> Vec<Sourced<FeatureFlagSpec>> {
    vec![Sourced {
        source: PolicySource {
            namespace: "bench".into(),
            name: "flags".into(),
            generation: 1,
        },
        spec: serde_yaml::from_str(FLAGS).unwrap(),
    }]
}

fn evaluation(c: &mut Criterion) {
    let metrics = PolicyMetrics::unregistered();
    let flags = FlagSet::compile(&spec(), &metrics.flags).unwrap();
    let context = r#"{"targetingKey": "user-42", "email": "ana@corp.io", "country": "US", "version": "2.3.1"}"#;
    let arena = Bump::new();
    let parsed = Context::parse(context, &arena).unwrap();
    let mut group = c.benchmark_group("flag evaluation");
    for key in ["static", "three-rules", "split"] {
        let flag = flags.get(key).unwrap();
        group.bench_function(key, |b| {
            b.iter_batched_ref(
                Bump::new,
                |scratch| black_box(flag.evaluate(parsed, scratch, 1_764_900_000).variant),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn gate(c: &mut Criterion) {
    let metrics = PolicyMetrics::unregistered();
    let env = CompileEnv::local(&metrics);
    let gates = FlagGates::compile(&spec(), &JwtKeys::new(), &env).unwrap();
    let none = FlagGates::default();
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static("user-42"));
    let req = RequestView {
        method: "GET",
        path: "/checkout/cart",
        query: None,
        host: Some("shop"),
        headers: &headers,
        client_ip: None,
    };
    let mut group = c.benchmark_group("gate per request");
    group.bench_function("gate and header", |b| {
        b.iter(|| black_box(gates.decide(&req, Direction::Inbound, 1_764_900_000)))
    });
    group.bench_function("no flags", |b| {
        b.iter(|| black_box(none.decide(&req, Direction::Inbound, 1_764_900_000)))
    });
    group.finish();
}

criterion_group!(benches, evaluation, gate);
criterion_main!(benches);
