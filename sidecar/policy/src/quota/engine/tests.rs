use bulwark_api::snapshot::Sourced;
use proptest::prelude::*;

use super::*;
use crate::{metrics::PolicyMetrics, request::testing::TestRequest};

/// 2025-03-10T12:00:00Z, a Monday.
const NOW: u64 = 1_741_608_000 * NANOS;
const HOUR: u64 = 3600 * NANOS;

fn policies(yaml: &str) -> Vec<Sourced<QuotaPolicySpec>> {
    vec![Sourced {
        source: PolicySource {
            namespace: "ns".into(),
            name: "p".into(),
            generation: 1,
        },
        spec: serde_yaml::from_str(yaml).unwrap(),
    }]
}

fn compile_with(yaml: &str, metrics: Arc<PolicyMetrics>) -> Quotas {
    Quotas::compile(
        &policies(yaml),
        &JwtKeys::new(),
        &CompileEnv::local(&metrics),
    )
    .unwrap()
}

fn compile(yaml: &str) -> Quotas {
    compile_with(yaml, Arc::new(PolicyMetrics::unregistered()))
}

fn compile_err(yaml: &str) -> CompileError {
    Quotas::compile(
        &policies(yaml),
        &JwtKeys::new(),
        &CompileEnv::local(&PolicyMetrics::unregistered()),
    )
    .err()
    .unwrap()
    .1
}

/// `POST /api` from 10.0.0.1 to api.local with `headers`.
fn req(headers: &[(&'static str, &str)]) -> TestRequest {
    TestRequest::new("/api")
        .method("POST")
        .host("api.local")
        .ip("10.0.0.1")
        .headers(headers)
}

/// A request with key `key` in `x-key`.
fn keyed(key: &str) -> TestRequest {
    req(&[("x-key", key)])
}

fn decide(quotas: &Quotas, usage: &UsageStore, req: &TestRequest, now: u64) -> QuotaDecision {
    // Local quotas never wait: the future is ready at once.
    futures::executor::block_on(quotas.decide(&req.view(), usage, now))
}

fn header<'a, N: AsRef<str>>(headers: &'a [(N, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

const DAILY: &str = "
timeZone: Europe/Paris
quotas:
- name: daily
  key: [{type: Header, name: x-key}]
  limit: 3
  period: Day
  thresholds: [50, 90]
  overrides:
  - values: [vip]
    limit: 5
";

#[test]
fn refuses_once_used_up_until_the_period_resets() {
    let quotas = compile(DAILY);
    let usage = UsageStore::new();
    for _ in 0..3 {
        assert!(decide(&quotas, &usage, &keyed("a"), NOW).reject.is_none());
    }
    let refused = decide(&quotas, &usage, &keyed("a"), NOW)
        .reject
        .expect("used up");
    assert_eq!(refused.status, 429);
    // Paris midnight is 23:00Z: 11 hours after noon UTC.
    assert_eq!(header(&refused.headers, "Retry-After"), Some("39600"));
    assert_eq!(
        header(&refused.headers, "Bulwark-Quota-Reset"),
        Some("2025-03-10T23:00:00Z")
    );
    assert_eq!(
        header(&refused.headers, "Bulwark-Quota-Exhausted"),
        Some("\"daily\";limit=3;used=3")
    );
    // Another key has its own budget; the VIP key has 5.
    assert!(decide(&quotas, &usage, &keyed("b"), NOW).reject.is_none());
    let vip = (0..6)
        .filter(|_| decide(&quotas, &usage, &keyed("vip"), NOW).reject.is_none())
        .count();
    assert_eq!(vip, 5);
    // Just after Paris midnight, a new day.
    let tomorrow = NOW + 11 * HOUR;
    assert!(
        decide(&quotas, &usage, &keyed("a"), tomorrow - NANOS)
            .reject
            .is_some(),
        "one second before midnight is still the old day"
    );
    assert!(
        decide(&quotas, &usage, &keyed("a"), tomorrow)
            .reject
            .is_none()
    );
}

#[test]
fn a_full_store_admits_new_keys_uncounted_and_says_so() {
    let metrics = Arc::new(PolicyMetrics::unregistered());
    let quotas = compile_with(DAILY, metrics.clone());
    let usage = UsageStore::with_max_keys(1);
    for _ in 0..3 {
        decide(&quotas, &usage, &keyed("a"), NOW);
    }
    assert!(
        decide(&quotas, &usage, &keyed("a"), NOW).reject.is_some(),
        "a key the store holds keeps its budget"
    );
    for _ in 0..5 {
        assert!(
            decide(&quotas, &usage, &keyed("b"), NOW).reject.is_none(),
            "no room for b: admitted, not counted"
        );
    }
    assert_eq!(usage.len(), 1);
    let full = metrics
        .stores
        .errors
        .with_label_values(&["quota", "full"])
        .get();
    assert_eq!(full, 5);
}

#[test]
fn thresholds_warn_in_a_header_and_count_each_crossing_once() {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(PolicyMetrics::register(&registry).unwrap());
    let quotas = compile_with(
        DAILY.replace("limit: 3", "limit: 10").as_str(),
        metrics.clone(),
    );
    let usage = UsageStore::new();
    let warnings: Vec<Option<String>> = (0..10)
        .map(|_| {
            let d = decide(&quotas, &usage, &keyed("a"), NOW);
            header(d.pending.response_headers(), WARNING_HEADER).map(str::to_owned)
        })
        .collect();
    assert_eq!(warnings[3], None, "40%");
    assert_eq!(
        warnings[4].as_deref(),
        Some("\"daily\";used=50;threshold=50;remaining=5;reset=39600")
    );
    assert_eq!(
        warnings[8].as_deref(),
        Some("\"daily\";used=90;threshold=90;remaining=1;reset=39600")
    );
    let text = String::from_utf8(crate::metrics::registry::render(&registry)).unwrap();
    for t in ["50", "90"] {
        let line = format!(
            "bulwark_quota_threshold_crossings_total{{policy=\"ns/p\",quota=\"daily\",threshold=\"{t}\"}} 1"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    assert!(text.contains(
        "bulwark_quota_requests_total{decision=\"allowed\",policy=\"ns/p\",quota=\"daily\"} 10"
    ));
}

#[test]
fn shadow_policies_count_but_never_refuse() {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(PolicyMetrics::register(&registry).unwrap());
    let quotas = compile_with(&format!("enforcement: Shadow\n{DAILY}"), metrics.clone());
    let usage = UsageStore::new();
    for _ in 0..5 {
        assert!(decide(&quotas, &usage, &keyed("a"), NOW).reject.is_none());
    }
    let (info, _) = quotas.find("ns/p", "daily").unwrap();
    assert_eq!(usage.used(&info.usage_key("a"), info.period_at(NOW)), 5);
    let text = String::from_utf8(crate::metrics::registry::render(&registry)).unwrap();
    assert!(text.contains(
        "bulwark_quota_requests_total{decision=\"shadow_limited\",policy=\"ns/p\",quota=\"daily\"} 2"
    ));
}

#[test]
fn custom_responses_and_every_matching_quota_applies() {
    let quotas = compile(
        "
response: {statusCode: 403, body: over, headers: [{name: X-Why, value: quota}]}
quotas:
- name: hourly
  limit: 1
  period: Hour
- name: monthly
  match: {path: {value: /other}}
  limit: 100
  period: Month
",
    );
    let usage = UsageStore::new();
    assert!(decide(&quotas, &usage, &req(&[]), NOW).reject.is_none());
    let refused = decide(&quotas, &usage, &req(&[]), NOW).reject.unwrap();
    assert_eq!((refused.status, refused.body.as_str()), (403, "over"));
    assert_eq!(header(&refused.headers, "X-Why"), Some("quota"));
    assert_eq!(header(&refused.headers, "Retry-After"), Some("3600"));
}

#[test]
fn request_bytes_use_content_length_or_are_counted_after_the_response() {
    let quotas = compile(
        "
quotas:
- name: upload
  unit: RequestBytes
  limit: 100
  period: Day
",
    );
    let usage = UsageStore::new();
    let sized = |n: &str| req(&[("content-length", n)]);
    assert!(decide(&quotas, &usage, &sized("60"), NOW).reject.is_none());
    assert!(
        decide(&quotas, &usage, &sized("50"), NOW).reject.is_some(),
        "60 + 50 > 100: refused whole"
    );
    let chunked = decide(&quotas, &usage, &req(&[]), NOW);
    assert!(chunked.reject.is_none());
    assert!(chunked.pending.has_deferred());
    futures::executor::block_on(chunked.pending.settle(
        &usage,
        Exchanged {
            request_bytes: 45,
            response_bytes: 999,
            ..Exchanged::default()
        },
    ));
    let (info, _) = quotas.find("ns/p", "upload").unwrap();
    assert_eq!(
        usage.used(&info.usage_key(""), info.period_at(NOW)),
        105,
        "streamed bytes are charged as read, past the limit"
    );
    assert!(decide(&quotas, &usage, &sized("0"), NOW).reject.is_some());
}

#[test]
fn response_bytes_let_the_crossing_request_complete_and_refuse_the_next() {
    let quotas = compile(
        "
quotas:
- name: download
  unit: ResponseBytes
  limit: 1000
  period: Week
  thresholds: [80]
",
    );
    let usage = UsageStore::new();
    let first = decide(&quotas, &usage, &req(&[]), NOW);
    assert!(first.reject.is_none());
    futures::executor::block_on(first.pending.settle(&usage, responded(900)));
    let second = decide(&quotas, &usage, &req(&[]), NOW);
    assert!(second.reject.is_none(), "900 < 1000");
    assert!(
        header(second.pending.response_headers(), WARNING_HEADER)
            .unwrap()
            .contains("used=90;threshold=80"),
        "warned on the usage before the response"
    );
    futures::executor::block_on(second.pending.settle(&usage, responded(900)));
    let third = decide(&quotas, &usage, &req(&[]), NOW);
    let refused = third.reject.expect("1800 ≥ 1000");
    // Next Monday 00:00 UTC is 6 days 12 hours away.
    assert_eq!(header(&refused.headers, "Retry-After"), Some("561600"));
}

fn responded(bytes: u64) -> Exchanged {
    Exchanged {
        response_bytes: bytes,
        ..Exchanged::default()
    }
}

#[test]
fn grpc_messages_are_charged_after_the_call_and_only_message_quotas_ask_for_counting() {
    let quotas = compile(
        "
quotas:
- name: sent
  unit: RequestMessages
  limit: 10
  period: Day
- name: received
  unit: ResponseMessages
  limit: 100
  period: Day
",
    );
    let usage = UsageStore::new();
    let call = decide(&quotas, &usage, &req(&[]), NOW);
    assert!(call.reject.is_none());
    assert!(call.pending.counts_messages());
    futures::executor::block_on(call.pending.settle(
        &usage,
        Exchanged {
            request_bytes: 5_000,
            response_bytes: 9_000,
            request_messages: 12,
            response_messages: 3,
        },
    ));
    let used = |name| {
        let (info, _) = quotas.find("ns/p", name).unwrap();
        usage.used(&info.usage_key(""), info.period_at(NOW))
    };
    assert_eq!((used("sent"), used("received")), (12, 3));
    let next = decide(&quotas, &usage, &req(&[]), NOW);
    assert!(next.reject.is_some(), "12 messages sent of 10: used up");

    let bytes = compile(
        "
quotas:
- name: download
  unit: ResponseBytes
  limit: 1000
  period: Day
",
    );
    let call = decide(&bytes, &usage, &req(&[]), NOW);
    assert!(!call.pending.counts_messages());
}

#[test]
fn bad_specs_name_the_field() {
    assert_eq!(
        compile_err(&DAILY.replace("Europe/Paris", "Europe/Atlantis")).field,
        "timeZone"
    );
    assert_eq!(
        compile_err(&DAILY.replace("values: [vip]", "values: [vip, extra]")).field,
        "quotas[0].overrides[0].values"
    );
    assert_eq!(
        compile_err(&DAILY.replace("[50, 90]", "[50, 50]")).field,
        "quotas[0].thresholds[1]"
    );
    assert_eq!(
        compile_err(&format!("scope: Global\n{DAILY}")).field,
        "scope"
    );
    let twice = format!("{DAILY}- name: daily\n  limit: 1\n  period: Hour\n");
    assert_eq!(compile_err(&twice).field, "quotas[1].name");
}

#[test]
fn usage_survives_a_recompile_with_a_new_limit_but_not_a_new_period() {
    let usage = UsageStore::new();
    let before = compile(DAILY);
    for _ in 0..3 {
        decide(&before, &usage, &keyed("a"), NOW);
    }
    let raised = compile(&DAILY.replace("limit: 3", "limit: 4"));
    assert!(decide(&raised, &usage, &keyed("a"), NOW).reject.is_none());
    assert!(
        decide(&raised, &usage, &keyed("a"), NOW).reject.is_some(),
        "3 used + 1 = the new limit of 4"
    );
    let weekly = compile(&DAILY.replace("period: Day", "period: Week"));
    assert!(
        decide(&weekly, &usage, &keyed("a"), NOW).reject.is_none(),
        "another period kind counts afresh"
    );
}

proptest! {
    /// Whatever the costs, a period never admits more than the key's limit, overrides apply, and
    /// the next period starts from zero.
    #[test]
    fn admitted_cost_within_a_period_never_exceeds_the_limit(
        costs in proptest::collection::vec((0u64..40, any::<bool>()), 1..60),
        limit in 1u64..100,
    ) {
        let quotas = compile(&format!("
quotas:
- name: bytes
  key: [{{type: Header, name: x-key}}]
  unit: RequestBytes
  limit: {limit}
  period: Hour
  overrides:
  - values: [vip]
    limit: {}
", limit * 2));
        let usage = UsageStore::new();
        let mut admitted = [0u64; 2];
        for (cost, vip) in &costs {
            let key = if *vip { "vip" } else { "std" };
            let req = req(&[("x-key", key), ("content-length", &cost.to_string())]);
            if decide(&quotas, &usage, &req, NOW).reject.is_none() {
                admitted[usize::from(*vip)] += cost;
            }
        }
        prop_assert!(admitted[0] <= limit);
        prop_assert!(admitted[1] <= limit * 2);
        // The first request of the next hour fits if it fits an empty budget.
        let (cost, _) = costs[0];
        let req = req(&[("x-key", "std"), ("content-length", &cost.to_string())]);
        let next_hour = decide(&quotas, &usage, &req, NOW + HOUR).reject.is_none();
        prop_assert_eq!(next_hour, cost.max(1) <= limit);
    }
}

#[test]
fn the_example_quota_policies_compile() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("quotapolicy-") {
            continue;
        }
        let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut spec: QuotaPolicySpec = serde_yaml::from_value(doc["spec"].clone()).unwrap();
        // Global examples need Redis to compile; everything else is checked locally.
        spec.scope = Scope::Local;
        let compiled = Quotas::compile(
            &[Sourced {
                source: PolicySource {
                    namespace: "ns".into(),
                    name: "p".into(),
                    generation: 1,
                },
                spec,
            }],
            &JwtKeys::new(),
            &CompileEnv::local(&PolicyMetrics::unregistered()),
        );
        assert!(compiled.is_ok(), "{name}: {:?}", compiled.err());
        seen += 1;
    }
    assert!(seen >= 2, "the quota examples were found");
}
