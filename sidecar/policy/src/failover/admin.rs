//! `GET /failover` on the admin listener: the live state of every upstream (the active group,
//! each endpoint's health and ejection, the breaker, the retry budget and the bulkhead), as
//! Envoy's `/clusters` shows hosts' health flags beside `/config_dump`'s configuration.

use serde_json::{Value, json};

use super::{Failover, upstream::Upstream};
use crate::lock::lock;

/// The report at `now` (Unix nanoseconds).
pub fn report(failover: &Failover, now: u64) -> Value {
    let upstreams: Vec<Value> = failover
        .upstreams()
        .iter()
        .map(|u| upstream(u, now))
        .collect();
    json!({ "upstreams": upstreams })
}

fn upstream(u: &Upstream, now: u64) -> Value {
    let compiled = &u.compiled;
    let groups: Vec<Value> = u
        .groups
        .iter()
        .map(|g| {
            let endpoints: Vec<Value> = g
                .endpoints
                .iter()
                .map(|e| {
                    json!({
                        "address": e.state.address.to_string(),
                        "zone": e.zone,
                        "weight": e.weight,
                        "health": e.state.health().as_str(),
                        "ejectedForSeconds": e.state.ejected_until(now)
                            .map(|until| (until - now) as f64 / 1e9),
                        "available": e.state.is_available(now),
                    })
                })
                .collect();
            json!({ "name": g.name, "endpoints": endpoints })
        })
        .collect();
    let (requests, retries) = lock(&compiled.budget).snapshot(now);
    json!({
        "policy": compiled.policy,
        "name": compiled.name,
        "mode": format!("{:?}", compiled.settings.groups.mode),
        "activeGroup": u.groups[u.active_group(now)].name,
        "groups": groups,
        "circuitBreaker": compiled.breaker.as_ref().map(|b| lock(b).state(now).as_str()),
        "retryBudget": {"requests": requests, "retries": retries, "windowSeconds": 10},
        "bulkheadInFlight": compiled.bulkhead.as_ref().map(|b| b.in_flight()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::CompileEnv, metrics::PolicyMetrics};

    #[test]
    fn the_report_shows_each_endpoint_and_the_active_group() {
        let metrics = PolicyMetrics::unregistered();
        let policies = vec![bulwark_api::snapshot::Sourced {
            source: bulwark_api::snapshot::PolicySource {
                namespace: "shop".into(),
                name: "payments".into(),
                generation: 1,
            },
            spec: serde_yaml::from_str(
                "upstreams:
- name: payments
  match: {hosts: [payments]}
  groups:
  - {name: primary, backends: [{address: '10.0.0.1:80'}]}
  - {name: secondary, backends: [{address: '10.1.0.1:80'}]}
  circuitBreaker: {}
",
            )
            .unwrap(),
        }];
        let failover = Failover::compile(
            &policies,
            &Default::default(),
            &Default::default(),
            &CompileEnv::local(&metrics),
        )
        .unwrap();
        failover.upstreams()[0].groups[0].endpoints[0]
            .state
            .record_probe(false, 1, 1);
        let report = report(&failover, 1_000_000_000);
        let u = &report["upstreams"][0];
        assert_eq!(u["policy"], "shop/payments");
        assert_eq!(u["activeGroup"], "secondary");
        assert_eq!(u["circuitBreaker"], "closed");
        assert_eq!(u["groups"][0]["endpoints"][0]["health"], "unhealthy");
        assert_eq!(u["groups"][0]["endpoints"][0]["available"], false);
        assert_eq!(u["groups"][1]["endpoints"][0]["health"], "unknown");
    }
}
