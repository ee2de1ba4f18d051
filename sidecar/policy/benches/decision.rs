//! The cost of one local rate-limit decision, without the proxy: match, key, counter lookup and
//! algorithm, with 100,000 distinct keys live in the store (the target: <= 100 ns).
//!
//!     cargo bench -p bulwark-policy --bench decision

use std::{hint::black_box, net::IpAddr};

use bulwark_api::{
    crd::rate_limit::RateLimitPolicySpec,
    snapshot::{PolicySource, Sourced},
};
use bulwark_policy::{
    compile::CompileEnv,
    jwt::JwtKeys,
    metrics::PolicyMetrics,
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
        &CompileEnv::local(&PolicyMetrics::unregistered()),
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

/// The claims of one bearer token, as a `JWTClaim` key part reads them: decoded only, or
/// verified with each kind of key. "verify" is what a token costs the first time (the
/// sidecar's call to `jsonwebtoken::decode`, signatures checked by ring); "remembered" is every
/// later request with it.
fn jwt(c: &mut Criterion) {
    use bulwark_api::{
        crd::common::{JwtSource, JwtVerification, SecretKeyRef},
        snapshot::SecretString,
    };
    use bulwark_policy::jwt::{TokenClaims, use_ring_for_verification};
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

    // As in the sidecar, where nothing signs before a policy is compiled.
    use_ring_for_verification();

    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let hmac = "a benchmark HMAC secret, 32 bytes";
    let rsa_private = include_str!("fixtures/rsa-2048.key.pem");
    let rsa_public = include_str!("fixtures/rsa-2048.pub.pem");
    let cases: [(&str, Option<Algorithm>, String, EncodingKey); 5] = [
        (
            "decoded, not verified",
            None,
            String::new(),
            EncodingKey::from_secret(b"x"),
        ),
        (
            "HS256",
            Some(Algorithm::HS256),
            hmac.into(),
            EncodingKey::from_secret(hmac.as_bytes()),
        ),
        (
            "RS256 (2048-bit)",
            Some(Algorithm::RS256),
            rsa_public.into(),
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
        ),
        (
            "ES256",
            Some(Algorithm::ES256),
            es.public_key_pem(),
            EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
        ),
        (
            "EdDSA",
            Some(Algorithm::EdDSA),
            ed.public_key_pem(),
            EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
        ),
    ];
    let claims = serde_json::json!({
        "sub": "user-1", "iss": "https://idp.example", "exp": 4_102_444_800u64, "scope": "read write"
    });
    let source = PolicySource {
        namespace: "bench".into(),
        name: "p".into(),
        generation: 1,
    };
    let metrics = PolicyMetrics::unregistered();
    let mut group = c.benchmark_group("jwt: claims of one token");
    for (name, algorithm, key, signing) in cases {
        let token = encode(
            &Header::new(algorithm.unwrap_or(Algorithm::HS256)),
            &claims,
            &signing,
        )
        .unwrap();
        let jwt = JwtSource {
            header: "Authorization".into(),
            verification: algorithm.map(|a| JwtVerification {
                key_secret_ref: SecretKeyRef {
                    name: "idp".into(),
                    key: "key".into(),
                },
                algorithms: vec![format!("{a:?}")],
                issuer: Some("https://idp.example".into()),
                audiences: vec![],
            }),
        };
        if let Some(algorithm) = algorithm {
            let decoding = match algorithm {
                Algorithm::HS256 => jsonwebtoken::DecodingKey::from_secret(key.as_bytes()),
                Algorithm::RS256 => {
                    jsonwebtoken::DecodingKey::from_rsa_pem(key.as_bytes()).unwrap()
                }
                Algorithm::ES256 => jsonwebtoken::DecodingKey::from_ec_pem(key.as_bytes()).unwrap(),
                _ => jsonwebtoken::DecodingKey::from_ed_pem(key.as_bytes()).unwrap(),
            };
            let validation = jsonwebtoken::Validation::new(algorithm);
            group.bench_function(format!("{name}: verify"), |b| {
                b.iter(|| {
                    jsonwebtoken::decode::<serde_json::Value>(
                        black_box(&token),
                        &decoding,
                        &validation,
                    )
                    .unwrap()
                })
            });
        }
        let keys = JwtKeys::from([("bench/idp/key".to_string(), SecretString::new(key))]);
        let source =
            TokenClaims::compile(Some(&jwt), &source, &keys, &CompileEnv::local(&metrics)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert!(
            source.claims(&headers).is_some(),
            "{name}: the token must pass"
        );
        let label = if algorithm.is_some() {
            format!("{name}: remembered")
        } else {
            name.to_owned()
        };
        group.bench_function(label, |b| {
            b.iter(|| black_box(source.claims(black_box(&headers))))
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    jwt(c);
    group(c, "local decision, 100k keys", KEYS);
    // One hot key: the compute part alone, with the counter in cache.
    group(c, "local decision, 1 key", 1);
    memory_latency(c);
}

criterion_group!(benches, bench);
criterion_main!(benches);
