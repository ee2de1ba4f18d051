//! Failover decisions end to end in the policy crate: a FailoverPolicy compiled, requests
//! routed, endpoints picked and calls retried, with time passed in (no proxy, no sleeps).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bulwark_api::snapshot::{Endpoint as SnapshotEndpoint, PolicySource, Sourced};

use super::{
    Failover,
    call::Next,
    endpoint::{Address, Health},
    outlier::CallResult,
    upstream::{Pick, Upstream},
};
use crate::{
    compile::CompileEnv,
    metrics::PolicyMetrics,
    request::testing::TestRequest,
    respond::Reason,
    state::{StateClaims, StateRegistry},
};

const SECOND: u64 = 1_000_000_000;

fn policy(upstreams: &str) -> Vec<Sourced<bulwark_api::crd::failover::FailoverPolicySpec>> {
    vec![Sourced {
        source: PolicySource {
            namespace: "shop".into(),
            name: "payments".into(),
            generation: 1,
        },
        spec: serde_yaml::from_str(&format!("upstreams:\n{upstreams}")).unwrap(),
    }]
}

fn compile_with(
    upstreams: &str,
    endpoints: &BTreeMap<String, Vec<SnapshotEndpoint>>,
    registry: &StateRegistry,
) -> Failover {
    let metrics = PolicyMetrics::unregistered();
    let env = CompileEnv {
        state: StateClaims::new(registry),
        ..CompileEnv::local(&metrics)
    };
    let failover =
        Failover::compile(&policy(upstreams), endpoints, &BTreeMap::new(), &env).unwrap();
    registry.reconcile(&env.state.into_used());
    failover
}

fn compile(upstreams: &str) -> Failover {
    compile_with(upstreams, &BTreeMap::new(), &StateRegistry::default())
}

const TWO_GROUPS: &str = "
- name: payments
  match: {hosts: [payments]}
  groups:
  - name: primary
    backends: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}]
  - name: secondary
    backends: [{address: '10.1.0.1:80'}]
  failover: {failbackAfter: 10s}
  outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 5s, maxEjectionPercent: 50}
";

fn upstream(failover: &Failover) -> Arc<Upstream> {
    failover
        .route(&TestRequest::new("/").host("payments").view())
        .expect("the request matches")
        .clone()
}

fn address(u: &Upstream, pick: Pick) -> String {
    u.endpoint(pick).state.address.to_string()
}

fn set_health(u: &Upstream, group: usize, healthy: bool) {
    for e in &u.groups[group].endpoints {
        for _ in 0..3 {
            e.state.record_probe(healthy, 1, 1);
        }
    }
}

#[test]
fn requests_are_routed_by_match_and_others_go_where_they_name() {
    let failover = compile(TWO_GROUPS);
    assert!(
        failover
            .route(&TestRequest::new("/").host("payments").view())
            .is_some()
    );
    assert!(
        failover
            .route(&TestRequest::new("/").host("orders").view())
            .is_none()
    );
}

#[test]
fn active_passive_spills_to_the_next_group_and_fails_back_only_after_failback_after() {
    let failover = compile(TWO_GROUPS);
    let u = upstream(&failover);
    let picks = |now| {
        (0..4)
            .map(|_| address(&u, u.pick(now, &[]).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        picks(SECOND),
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.2:80"]
    );

    set_health(&u, 0, false);
    assert_eq!(
        picks(2 * SECOND),
        ["10.1.0.1:80"; 4],
        "the whole primary is down"
    );
    set_health(&u, 0, true);
    assert_eq!(
        u.active_group(3 * SECOND),
        1,
        "healthy again, but not for 10s yet"
    );
    assert_eq!(u.active_group(12 * SECOND), 1);
    assert_eq!(u.active_group(13 * SECOND), 0, "back after failbackAfter");
}

#[test]
fn a_group_below_min_healthy_percent_spills_and_a_flap_restarts_the_failback_clock() {
    let failover = compile(&TWO_GROUPS.replace(
        "failbackAfter: 10s",
        "failbackAfter: 10s, minHealthyPercent: 60",
    ));
    let u = upstream(&failover);
    u.groups[0].endpoints[0].state.record_probe(false, 1, 1);
    assert_eq!(u.active_group(SECOND), 1, "1 of 2 healthy is below 60%");
    u.groups[0].endpoints[0].state.record_probe(true, 1, 1);
    assert_eq!(u.active_group(2 * SECOND), 1);
    u.groups[0].endpoints[0].state.record_probe(false, 1, 1);
    assert_eq!(u.active_group(5 * SECOND), 1);
    u.groups[0].endpoints[0].state.record_probe(true, 1, 1);
    assert_eq!(u.active_group(6 * SECOND), 1);
    assert_eq!(
        u.active_group(15 * SECOND),
        1,
        "the clock restarted at 6s, not 2s"
    );
    assert_eq!(u.active_group(16 * SECOND), 0);
}

#[test]
fn active_active_spreads_by_weight_over_every_group() {
    let failover = compile(
        "
- name: billing
  match: {hosts: [payments]}
  groups:
  - name: paris
    backends: [{address: '10.0.0.1:80', weight: 3}, {address: '10.0.0.2:80', weight: 3}]
  - name: frankfurt
    backends: [{address: '10.1.0.1:80', weight: 2}]
  failover: {mode: ActiveActive}
",
    );
    let u = upstream(&failover);
    let mut counts = BTreeMap::<String, u32>::new();
    for _ in 0..800 {
        *counts
            .entry(address(&u, u.pick(SECOND, &[]).unwrap()))
            .or_default() += 1;
    }
    assert_eq!(
        counts.into_values().collect::<Vec<_>>(),
        [300, 300, 200],
        "3:3:2"
    );
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint_and_then_to_the_next_group() {
    let failover = compile(TWO_GROUPS);
    let u = upstream(&failover);
    let mut call = u.call("GET", SECOND).await.unwrap();
    let first = call.endpoint().state.address.to_string();
    let Next::Retry(delay) = call.finish_try(CallResult::ConnectFailure, None, true, SECOND) else {
        panic!("a connect failure is retried");
    };
    assert!(
        delay <= Duration::from_millis(25),
        "the first backoff is within backoffBase"
    );
    call.next_try(SECOND).unwrap();
    let second = call.endpoint().state.address.to_string();
    assert_ne!(first, second);
    assert!(matches!(
        call.finish_try(CallResult::Status(503), None, true, SECOND),
        Next::Retry(_)
    ));
    call.next_try(SECOND).unwrap();
    assert_eq!(
        call.endpoint().state.address.to_string(),
        "10.1.0.1:80",
        "the primary is spent"
    );
    assert_eq!(
        call.finish_try(CallResult::Status(503), None, true, SECOND),
        Next::Done,
        "two retries by default"
    );
}

#[tokio::test]
async fn what_is_not_retried() {
    let failover = compile(TWO_GROUPS);
    let u = upstream(&failover);
    let done = |method: &'static str, result, replayable| {
        let u = u.clone();
        async move {
            let mut call = u.call(method, SECOND).await.unwrap();
            call.finish_try(result, None, replayable, SECOND) == Next::Done
        }
    };
    assert!(
        done("POST", CallResult::Status(503), true).await,
        "POST is not idempotent"
    );
    assert!(
        !done("POST", CallResult::ConnectFailure, true).await,
        "nothing was sent"
    );
    assert!(
        done("GET", CallResult::Status(500), true).await,
        "500 is not a gateway error"
    );
    assert!(done("GET", CallResult::Status(404), true).await);
    assert!(
        done("GET", CallResult::Timeout, true).await,
        "Timeout is not in the default retryOn"
    );
    assert!(
        done("GET", CallResult::Reset, false).await,
        "the body is no longer held"
    );
}

#[tokio::test]
async fn a_429_waits_its_retry_after_when_it_fits_the_deadline() {
    let failover = compile(
        "
- name: payments
  match: {hosts: [payments]}
  groups: [{name: primary, backends: [{address: '10.0.0.1:80'}]}]
  retry: {retryOn: ['429']}
  timeouts: {request: 3s}
",
    );
    let u = upstream(&failover);
    let mut call = u.call("GET", SECOND).await.unwrap();
    assert_eq!(
        call.finish_try(
            CallResult::Status(429),
            Some(Duration::from_secs(1)),
            true,
            SECOND
        ),
        Next::Retry(Duration::from_secs(1))
    );
    call.next_try(2 * SECOND).unwrap();
    assert_eq!(
        call.finish_try(
            CallResult::Status(429),
            Some(Duration::from_secs(2)),
            true,
            2 * SECOND
        ),
        Next::Done,
        "2s more would pass the 3s deadline"
    );
}

#[tokio::test]
async fn grpc_classes_retry_grpc_calls_by_their_status_and_grpc_timeout_caps_the_deadline() {
    let failover = compile(
        "
- name: payments
  match: {hosts: [payments]}
  groups: [{name: primary, backends: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}]}]
  retry: {retryOn: [Unavailable, ResourceExhausted], attempts: 3}
  timeouts: {request: 10s}
",
    );
    let u = upstream(&failover);
    let after = |code| {
        let u = u.clone();
        async move {
            let mut call = u.call("POST", SECOND).await.unwrap();
            call.finish_try(CallResult::Grpc(code), None, true, SECOND)
        }
    };
    // A gRPC call is a POST: the gRPC class allows its retry without retryNonIdempotent.
    assert!(matches!(after(14).await, Next::Retry(_)), "UNAVAILABLE");
    assert!(
        matches!(after(8).await, Next::Retry(_)),
        "RESOURCE_EXHAUSTED"
    );
    assert_eq!(after(13).await, Next::Done, "INTERNAL is not listed");
    assert_eq!(after(0).await, Next::Done, "OK");
    // Still a POST for what is not a gRPC status.
    let mut call = u.call("POST", SECOND).await.unwrap();
    assert_eq!(
        call.finish_try(CallResult::Status(503), None, true, SECOND),
        Next::Done
    );

    let mut call = u.call("POST", SECOND).await.unwrap();
    assert_eq!(call.try_timeout(SECOND), Duration::from_secs(10));
    call.limit_to(Duration::from_millis(300));
    assert_eq!(call.try_timeout(SECOND), Duration::from_millis(300));
    assert_eq!(
        call.try_timeout(SECOND + 200_000_000),
        Duration::from_millis(100)
    );
    call.limit_to(Duration::from_secs(60));
    assert_eq!(
        call.try_timeout(SECOND),
        Duration::from_millis(300),
        "a longer grpc-timeout does not extend the request timeout"
    );
    // No retry once the backoff would pass the caller's deadline.
    let mut call = u.call("POST", SECOND).await.unwrap();
    call.limit_to(Duration::from_nanos(1));
    assert_eq!(
        call.finish_try(CallResult::Grpc(14), None, true, SECOND + 1),
        Next::Done
    );
}

#[test]
fn an_unavailable_grpc_endpoint_is_ejected_as_a_503_one_is() {
    let failover = compile(TWO_GROUPS);
    let u = upstream(&failover);
    let first = u.pick(SECOND, &[]).unwrap();
    let endpoint = &u.endpoint(first).state;
    let outlier = u.compiled.settings.outlier.as_ref();
    assert!(!endpoint.record_call(CallResult::Grpc(14), outlier, SECOND, || true));
    assert!(endpoint.record_call(CallResult::Grpc(14), outlier, SECOND, || true));
    let second = u.pick(SECOND, &[]).unwrap();
    let endpoint = &u.endpoint(second).state;
    for _ in 0..5 {
        // NOT_FOUND is the app's answer, not the endpoint's failure.
        assert!(!endpoint.record_call(CallResult::Grpc(5), outlier, SECOND, || true));
    }
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_an_outage() {
    let failover = compile(
        "
- name: payments
  match: {hosts: [payments]}
  groups: [{name: primary, backends: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}]}]
  retry: {attempts: 3, budgetPercent: 20, minRetriesPerSecond: 1}
",
    );
    let u = upstream(&failover);
    let (mut calls, mut retries) = (0u64, 0u64);
    // 1,000 calls over 10 s, every try answered 503.
    for i in 0..1000u64 {
        let now = 100 * SECOND + i * SECOND / 100;
        let mut call = u.call("GET", now).await.unwrap();
        calls += 1;
        while let Next::Retry(_) = call.finish_try(CallResult::Status(503), None, true, now) {
            retries += 1;
            call.next_try(now).unwrap();
        }
    }
    assert_eq!(calls, 1000);
    assert!(
        retries <= 200 + 10,
        "{retries} retries: 20% of calls plus 1/s over 10 s at most"
    );
    assert!(
        retries >= 150,
        "{retries}: the budget is spent, not refused outright"
    );
}

#[tokio::test]
async fn connect_failures_are_requeues_the_budget_does_not_charge() {
    let failover = compile(
        "
- name: payments
  match: {hosts: [payments]}
  groups:
  - {name: primary, backends: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}]}
  - {name: standby, backends: [{address: '10.1.0.1:80'}]}
  retry: {attempts: 2, budgetPercent: 1, minRetriesPerSecond: 1}
",
    );
    let u = upstream(&failover);
    // The primary is dead: every call is refused twice, then the standby answers.
    for i in 0..300u64 {
        let now = 100 * SECOND + i * SECOND / 100;
        let mut call = u.call("GET", now).await.unwrap();
        let mut served = false;
        for _ in 0..3 {
            let standby = call.endpoint().state.address.to_string() == "10.1.0.1:80";
            let result = if standby {
                CallResult::Status(200)
            } else {
                CallResult::ConnectFailure
            };
            match call.finish_try(result, None, true, now) {
                Next::Retry(_) => call.next_try(now).unwrap(),
                Next::Done => {
                    served = standby;
                    break;
                }
            }
        }
        assert!(served, "call {i} reached the standby despite a 1% budget");
    }
}

#[tokio::test]
async fn an_ejected_endpoint_is_skipped_until_its_ejection_ends() {
    let failover = compile(TWO_GROUPS);
    let u = upstream(&failover);
    let bad = Pick { group: 0, index: 0 };
    for _ in 0..2 {
        let mut call = u.call("GET", SECOND).await.unwrap();
        while call.endpoint().state.address.to_string() != "10.0.0.1:80" {
            call = u.call("GET", SECOND).await.unwrap();
        }
        call.finish_try(CallResult::Status(500), None, true, SECOND);
    }
    assert!(
        u.endpoint(bad).state.is_ejected(SECOND),
        "two 5xx in a row eject it"
    );
    let picks: Vec<_> = (0..4)
        .map(|_| address(&u, u.pick(2 * SECOND, &[]).unwrap()))
        .collect();
    assert_eq!(picks, ["10.0.0.2:80"; 4]);
    assert!(
        !u.endpoint(bad).state.is_ejected(6 * SECOND),
        "back after baseEjectionTime"
    );
    assert!(
        !u.may_eject(0, 2 * SECOND),
        "ejecting the other would exceed 50%"
    );
}

#[tokio::test]
async fn with_nothing_available_the_fallback_answers() {
    let failover = compile(&format!(
        "{TWO_GROUPS}  fallback: {{statusCode: 503, headers: [{{name: Content-Type, value: application/json}}], body: '{{\"error\":\"down\"}}'}}\n"
    ));
    let u = upstream(&failover);
    set_health(&u, 0, false);
    set_health(&u, 1, false);
    let reply = u.call("GET", SECOND).await.err().unwrap();
    assert_eq!(
        (reply.status, reply.reason),
        (503, Reason::NoHealthyUpstream)
    );
    assert_eq!(reply.body, r#"{"error":"down"}"#);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .count(),
        1
    );
}

#[tokio::test]
async fn an_open_breaker_refuses_calls_until_it_half_opens() {
    let failover = compile(
        "
- name: payments
  match: {hosts: [payments]}
  groups: [{name: primary, backends: [{address: '10.0.0.1:80'}]}]
  retry: {attempts: 0}
  circuitBreaker: {minimumCalls: 4, windowSize: 4, failureRateThreshold: 50, openDuration: 5s, halfOpenCalls: 1}
",
    );
    let u = upstream(&failover);
    for _ in 0..4 {
        let mut call = u.call("GET", SECOND).await.unwrap();
        call.finish_try(CallResult::Status(503), None, true, SECOND);
    }
    let refused = u.call("GET", 2 * SECOND).await.err().unwrap();
    assert_eq!(refused.reason, Reason::CircuitOpen);
    let mut probe = u.call("GET", 7 * SECOND).await.unwrap();
    probe.finish_try(CallResult::Status(200), None, true, 7 * SECOND);
    assert!(
        u.call("GET", 7 * SECOND).await.is_ok(),
        "closed after a good probe"
    );
}

#[test]
fn endpoints_keep_their_state_across_snapshots_while_they_stay() {
    let registry = StateRegistry::default();
    let service = "
- name: payments
  match: {hosts: [payments]}
  groups: [{name: primary, backends: [{service: {name: payments, port: 8080}}]}]
";
    let endpoints = |addresses: &[&str]| {
        BTreeMap::from([(
            "shop/payments:8080".to_owned(),
            addresses
                .iter()
                .map(|a| SnapshotEndpoint {
                    address: (*a).into(),
                    zone: None,
                    node_name: None,
                })
                .collect(),
        )])
    };
    let first = compile_with(
        service,
        &endpoints(&["10.0.0.1:80", "10.0.0.2:80"]),
        &registry,
    );
    let u = upstream(&first);
    u.groups[0].endpoints[0].state.record_probe(false, 1, 1);
    let second = first.with_endpoints(&endpoints(&["10.0.0.1:80", "10.0.0.3:80"]));
    second.prune_endpoints();
    let u = upstream(&second);
    assert_eq!(
        u.groups[0].endpoints[0].state.health(),
        Health::Unhealthy,
        "kept"
    );
    assert_eq!(
        u.groups[0].endpoints[1].state.address,
        Address::parse("10.0.0.3:80").unwrap()
    );
    assert_eq!(
        u.groups[0].endpoints[1].state.health(),
        Health::Unknown,
        "new"
    );
    let recompiled = compile_with(service, &endpoints(&["10.0.0.1:80"]), &registry);
    assert_eq!(
        upstream(&recompiled).groups[0].endpoints[0].state.health(),
        Health::Unhealthy
    );
}

fn zoned(caller_zone: &str) -> Failover {
    let metrics = PolicyMetrics::unregistered();
    let env = CompileEnv {
        zone: Some(caller_zone),
        ..CompileEnv::local(&metrics)
    };
    // Zone a: 1 endpoint, b: 2, c: 3.
    let endpoints = BTreeMap::from([(
        "shop/payments:8080".to_owned(),
        [
            ("10.0.0.1", "a"),
            ("10.0.1.1", "b"),
            ("10.0.1.2", "b"),
            ("10.0.2.1", "c"),
            ("10.0.2.2", "c"),
            ("10.0.2.3", "c"),
        ]
        .iter()
        .map(|(ip, zone)| SnapshotEndpoint {
            address: format!("{ip}:80"),
            zone: Some((*zone).into()),
            node_name: None,
        })
        .collect(),
    )]);
    let spec = "
- name: payments
  match: {hosts: [payments]}
  groups: [{name: primary, backends: [{service: {name: payments, port: 8080}}]}]
  failover: {zoneAware: true}
";
    Failover::compile(&policy(spec), &endpoints, &BTreeMap::new(), &env).unwrap()
}

fn local_share(failover: &Failover, prefix: &str) -> f64 {
    let u = upstream(failover);
    let picks = 6000;
    let local = (0..picks)
        .filter(|_| address(&u, u.pick(SECOND, &[]).unwrap()).starts_with(prefix))
        .count();
    local as f64 / picks as f64
}

#[test]
fn zone_aware_picks_stay_in_the_zone_up_to_its_share_of_the_endpoints() {
    // b and c hold at least their fair share (1/3 of 6 endpoints): every call stays local.
    assert_eq!(local_share(&zoned("b"), "10.0.1."), 1.0);
    assert_eq!(local_share(&zoned("c"), "10.0.2."), 1.0);
    // a holds 1 of 6: half its callers' calls stay (1 × 3 zones / 6), the rest go elsewhere,
    // so a's one endpoint is not sent all of zone a's traffic.
    let a = local_share(&zoned("a"), "10.0.0.");
    assert!((0.46..0.54).contains(&a), "{a}");
}

#[tokio::test]
async fn least_request_sends_calls_to_the_endpoint_with_fewer_in_flight() {
    let failover = compile(
        "
- name: payments
  match: {hosts: [payments]}
  loadBalancer: LeastRequest
  groups: [{name: primary, backends: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}]}]
",
    );
    let u = upstream(&failover);
    // Ten calls held open on whichever endpoint they got: with two endpoints, power of two
    // choices always compares both, so the calls alternate and never pile up.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(u.call("GET", SECOND).await.unwrap());
    }
    let on_first = held
        .iter()
        .filter(|c| c.endpoint().state.address.to_string() == "10.0.0.1:80")
        .count();
    assert_eq!(on_first, 5, "in flight: 5 and 5");
    assert_eq!(u.groups[0].endpoints[0].state.in_flight(), 5);
    drop(held);
    assert_eq!(
        u.groups[0].endpoints[0].state.in_flight(),
        0,
        "dropped calls end their tries"
    );
}

const BREAKER: &str = "
- name: payments
  match: {hosts: [payments]}
  groups: [{name: primary, backends: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}]}]
  circuitBreaker: {minimumCalls: 4, windowSize: 4, failureRateThreshold: 50, openDuration: 5s, halfOpenCalls: 1}
";

#[tokio::test]
async fn the_breaker_judges_calls_so_a_call_that_failed_over_is_a_success() {
    let failover = compile(BREAKER);
    let u = upstream(&failover);
    for _ in 0..10 {
        let mut call = u.call("GET", SECOND).await.unwrap();
        if call.endpoint().state.address.to_string() == "10.0.0.1:80" {
            // The first endpoint is dead: its try fails, the retry lands on the other.
            assert!(matches!(
                call.finish_try(CallResult::ConnectFailure, None, true, SECOND),
                Next::Retry(_)
            ));
            call.next_try(SECOND).unwrap();
        }
        assert_eq!(
            call.finish_try(CallResult::Status(200), None, true, SECOND),
            Next::Done
        );
    }
    assert!(u.call("GET", 2 * SECOND).await.is_ok(), "still closed");
}

#[tokio::test]
async fn a_half_open_permit_of_an_abandoned_call_goes_back() {
    let failover = compile(&BREAKER.replace("10.0.0.2", "10.0.0.1"));
    let u = upstream(&failover);
    for _ in 0..4 {
        let mut call = u.call("GET", SECOND).await.unwrap();
        while let Next::Retry(_) = call.finish_try(CallResult::Status(503), None, true, SECOND) {
            call.next_try(SECOND).unwrap();
        }
    }
    assert!(u.call("GET", 2 * SECOND).await.is_err(), "open");
    let abandoned = u.call("GET", 7 * SECOND).await.unwrap();
    assert!(
        u.call("GET", 7 * SECOND).await.is_err(),
        "the one trial permit is taken"
    );
    drop(abandoned);
    assert!(
        u.call("GET", 7 * SECOND).await.is_ok(),
        "given back when the call was dropped"
    );
}

#[test]
fn a_ca_bundle_that_is_not_pem_certificates_is_refused_naming_the_field() {
    let metrics = PolicyMetrics::unregistered();
    let spec = "
- name: payments
  match: {hosts: [payments]}
  groups: [{name: primary, backends: [{address: '10.0.0.1:443'}]}]
  tls: {caSecretRef: {name: ca, key: ca.crt}}
";
    let compile = |pem: &str| {
        let bundles = BTreeMap::from([("shop/ca/ca.crt".to_owned(), pem.to_owned())]);
        Failover::compile(
            &policy(spec),
            &BTreeMap::new(),
            &bundles,
            &CompileEnv::local(&metrics),
        )
        .err()
        .map(|(_, e)| (e.field, e.message))
    };
    let (field, message) = compile("not a certificate").unwrap();
    assert_eq!(field, "upstreams[0].tls.caSecretRef");
    assert!(message.contains("no PEM certificate"), "{message}");
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let (_, message) = compile(garbage).unwrap();
    assert!(message.contains("not X.509"), "{message}");
}
