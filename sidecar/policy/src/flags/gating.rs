//! What `FeatureFlag`s do to proxied requests, for apps with no OpenFeature SDK: **gates** (a
//! matching request is let through only when its flag resolves to an allowed variant, else the
//! gate's deny answer) and **injected headers** (a flag's variant name passed to the app).
//!
//! Each resource's evaluation context is built from the request by the rate limits' key
//! sources (`context.targetingKey`, `context.attributes`, JWT claims verified when
//! `context.jwt.verification` says so). A source with no value (or an empty one) leaves its
//! attribute out. Each flag a request needs is evaluated once, whether a gate and a header both
//! use it. A flag that resolves to no variant (disabled, or an error) fails its gates closed and
//! removes its header, so a client can never supply either.

use std::{cell::RefCell, sync::Arc};

use bulwark_api::{
    crd::{
        FeatureFlagSpec,
        common::{DenyResponse, KeySource},
        feature_flag::TrafficDirection,
    },
    snapshot::{PolicySource, Sourced},
};
use datalogic_rs::{
    DataValue,
    bumpalo::{Bump, collections::Vec as ArenaVec},
};
use http::HeaderName;
use prometheus::{IntCounter, IntCounterVec};

use super::{CompiledFlag, Context, FlagSet, metrics::EvaluationSeries};
use crate::{
    admission::Direction,
    compile::{CompileEnv, CompileError},
    jwt::{JwtKeys, TokenClaims},
    keys::KeyBuilder,
    matching::CompiledMatch,
    request::RequestView,
    respond::{DenyTemplate, Reason, Reply},
};

/// The gates and injected headers of a snapshot's `FeatureFlag`s.
#[derive(Default)]
pub struct FlagGates {
    resources: Vec<Resource>,
}

/// One `FeatureFlag`'s rules, evaluating its own definitions of its flags.
struct Resource {
    targeting_key: Option<KeyBuilder>,
    attributes: Vec<(String, KeyBuilder)>,
    /// The flags its gates and headers use, each once.
    flags: Vec<CompiledFlag>,
    /// Each flag's evaluation series (`flags[i]`'s at `i`).
    evaluations: Vec<EvaluationSeries>,
    gates: Vec<Gate>,
    /// Injected headers: the flag (index into `flags`), the header, and the requests.
    headers: Vec<(usize, HeaderName, Direction)>,
}

struct Gate {
    direction: Direction,
    matcher: CompiledMatch,
    /// Index into the resource's `flags`.
    flag: usize,
    allowed: Vec<String>,
    /// What a variant outside `allowed` gets.
    otherwise: Otherwise,
    /// Its `bulwark_flag_gate_decisions_total` series, looked up once: allowed, denied, routed.
    decisions: [IntCounter; 3],
}

enum Otherwise {
    /// The gate's `deny` answer.
    Deny(DenyTemplate),
    /// The request goes to this upstream instead of the app (`routeTo`).
    RouteTo(UpstreamRef),
}

/// A `FailoverPolicy` upstream named by a gate's `routeTo`: its name, in the namespace of the
/// `FeatureFlag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// What the gates decided for one request.
#[derive(Debug, Default, PartialEq)]
pub struct GateDecision {
    /// `Some`: a gate refused the request with this answer.
    pub reply: Option<Reply>,
    /// Headers to set on the request to the app (`None`: remove any the client sent).
    pub request_headers: Vec<(HeaderName, Option<String>)>,
    /// `Some`: a gate with `routeTo` sends the request to this upstream instead of the app.
    pub route_to: Option<UpstreamRef>,
}

impl FlagGates {
    /// Compiles the gates and injected headers of every spec; an error names the resource and
    /// the field (`gates[0].match.path`).
    pub fn compile(
        specs: &[Sourced<FeatureFlagSpec>],
        jwt_keys: &JwtKeys,
        env: &CompileEnv<'_>,
    ) -> Result<Self, (PolicySource, CompileError)> {
        let mut resources = Vec::new();
        for Sourced { source, spec } in specs {
            if spec.gates.is_empty() && spec.inject_headers.is_empty() {
                continue;
            }
            let resource =
                compile_resource(source, spec, jwt_keys, env).map_err(|e| (source.clone(), e))?;
            resources.push(resource);
        }
        Ok(Self { resources })
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The request headers the contexts read (they must be unambiguous).
    pub fn headers_read(&self) -> impl Iterator<Item = &HeaderName> {
        self.resources.iter().flat_map(|r| {
            r.targeting_key
                .iter()
                .chain(r.attributes.iter().map(|(_, b)| b))
                .flat_map(KeyBuilder::headers_read)
        })
    }

    /// Decides `req` at `now` (Unix seconds, `$flagd.timestamp`).
    pub fn decide(&self, req: &RequestView<'_>, direction: Direction, now: i64) -> GateDecision {
        if self.resources.is_empty() {
            return GateDecision::default();
        }
        // The evaluation's scratch space, kept by the thread from one request to the next.
        thread_local!(static ARENA: RefCell<Bump> = RefCell::new(Bump::new()));
        ARENA.with(|arena| {
            let mut arena = arena.borrow_mut();
            let decision = self.decide_in(req, direction, now, &arena);
            arena.reset();
            decision
        })
    }

    fn decide_in(
        &self,
        req: &RequestView<'_>,
        direction: Direction,
        now: i64,
        arena: &Bump,
    ) -> GateDecision {
        let mut decision = GateDecision::default();
        let mut value = String::new();
        for resource in &self.resources {
            // Each gate's match runs once; the flags needed are the headers' and these gates'.
            let mut gates = ArenaVec::new_in(arena);
            gates.extend(
                resource
                    .gates
                    .iter()
                    .filter(|g| g.direction == direction && g.matcher.matches(req)),
            );
            let headers = || resource.headers.iter().filter(|(.., d)| *d == direction);
            let mut needed = ArenaVec::from_iter_in(resource.flags.iter().map(|_| false), arena);
            let flags_used = headers().map(|(flag, ..)| *flag);
            flags_used
                .chain(gates.iter().map(|g| g.flag))
                .for_each(|flag| needed[flag] = true);
            if !needed.contains(&true) {
                continue;
            }
            let context = resource.context(req, arena, &mut value);
            let variants = ArenaVec::from_iter_in(
                resource
                    .flags
                    .iter()
                    .zip(&needed)
                    .zip(&resource.evaluations)
                    .map(|((flag, needed), series)| {
                        needed
                            .then(|| {
                                let resolution = flag.evaluate(context, arena, now);
                                series.count(flag, &resolution);
                                resolution.variant
                            })
                            .flatten()
                    }),
                arena,
            );
            for gate in gates {
                let allowed =
                    variants[gate.flag].is_some_and(|v| gate.allowed.iter().any(|a| a == v));
                let [allowed_count, denied_count, routed_count] = &gate.decisions;
                if allowed {
                    allowed_count.inc();
                    continue;
                }
                match &gate.otherwise {
                    Otherwise::Deny(deny) => {
                        denied_count.inc();
                        decision.reply = Some(deny.reply(Reason::FlagGated, Vec::new()));
                        return decision;
                    }
                    // The first gate that routes wins; later gates may still deny.
                    Otherwise::RouteTo(upstream) => {
                        routed_count.inc();
                        decision.route_to.get_or_insert_with(|| upstream.clone());
                    }
                }
            }
            for (flag, header, _) in headers() {
                decision
                    .request_headers
                    .push((header.clone(), variants[*flag].map(str::to_owned)));
            }
        }
        decision
    }
}

impl Resource {
    /// The request's evaluation context: `targetingKey` and the attributes that have a value.
    /// Attribute names are the compiled policy's; only the values go into the arena.
    fn context<'a>(
        &'a self,
        req: &RequestView<'_>,
        arena: &'a Bump,
        value: &mut String,
    ) -> Context<'a> {
        let mut entries = ArenaVec::with_capacity_in(self.attributes.len() + 1, arena);
        let sources = self
            .targeting_key
            .iter()
            .map(|b| ("targetingKey", b))
            .chain(self.attributes.iter().map(|(name, b)| (name.as_str(), b)));
        for (name, builder) in sources {
            value.clear();
            builder.write_key(req, value);
            if !value.is_empty() {
                entries.push((name, DataValue::String(arena.alloc_str(value))));
            }
        }
        Context::from_entries(entries.into_bump_slice())
    }
}

fn compile_resource(
    source: &PolicySource,
    spec: &FeatureFlagSpec,
    jwt_keys: &JwtKeys,
    env: &CompileEnv<'_>,
) -> Result<Resource, CompileError> {
    let context = spec.context.clone().unwrap_or_default();
    let claims = Arc::new(
        TokenClaims::compile(context.jwt.as_ref(), source, jwt_keys, env)
            .map_err(|e| e.under("context"))?,
    );
    let source_of = |from: &KeySource, field: String| {
        KeyBuilder::compile(std::slice::from_ref(from), &claims)
            .map_err(|e| CompileError::new(field, e.message))
    };
    let targeting_key = context
        .targeting_key
        .as_ref()
        .map(|from| source_of(from, "context.targetingKey".into()))
        .transpose()?;
    let attributes = context
        .attributes
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Ok((
                a.name.clone(),
                source_of(&a.from, format!("context.attributes[{i}].from"))?,
            ))
        })
        .collect::<Result<Vec<_>, CompileError>>()?;

    let mut flags: Vec<CompiledFlag> = Vec::new();
    let mut evaluations = Vec::new();
    let mut flag_index = |key: &str, field: String| -> Result<usize, CompileError> {
        if let Some(i) = flags.iter().position(|f| f.key == key) {
            return Ok(i);
        }
        let flag = spec
            .flags
            .get(key)
            .ok_or_else(|| CompileError::new(field.clone(), format!("no flag {key:?} in flags")))?;
        let flag = FlagSet::compile_one(key, flag, spec, source)?;
        evaluations.push(EvaluationSeries::new(
            env.metrics.flags.evaluations.clone(),
            &flag,
        ));
        flags.push(flag);
        Ok(flags.len() - 1)
    };
    let mut gates = Vec::new();
    for (i, gate) in spec.gates.iter().enumerate() {
        let at = format!("gates[{i}]");
        let default_deny = DenyResponse {
            status_code: Some(404),
            body: Some(String::new()),
            ..DenyResponse::default()
        };
        gates.push(Gate {
            direction: direction_of(gate.direction),
            matcher: CompiledMatch::compile(&gate.match_, &env.regexes)
                .map_err(|e| e.under(&format!("{at}.match")))?,
            flag: flag_index(&gate.flag, format!("{at}.flag"))?,
            allowed: gate.allowed_variants.clone(),
            decisions: gate_decisions(&env.metrics.flags.gate_decisions, &gate.name),
            otherwise: match &gate.route_to {
                Some(name) => Otherwise::RouteTo(UpstreamRef {
                    namespace: source.namespace.as_str().into(),
                    name: name.as_str().into(),
                }),
                None => Otherwise::Deny(
                    DenyTemplate::compile(Some(gate.deny.as_ref().unwrap_or(&default_deny)), 404)
                        .map_err(|e| e.under(&format!("{at}.deny")))?,
                ),
            },
        });
    }
    let mut headers = Vec::new();
    for (i, inject) in spec.inject_headers.iter().enumerate() {
        let at = format!("injectHeaders[{i}]");
        let name = HeaderName::try_from(inject.header.as_str())
            .map_err(|_| CompileError::new(format!("{at}.header"), "not a valid header name"))?;
        let flag = flag_index(&inject.flag, format!("{at}.flag"))?;
        headers.push((flag, name, direction_of(inject.direction)));
    }
    Ok(Resource {
        targeting_key,
        attributes,
        flags,
        evaluations,
        gates,
        headers,
    })
}

fn gate_decisions(decisions: &IntCounterVec, gate: &str) -> [IntCounter; 3] {
    ["allowed", "denied", "routed"].map(|decision| decisions.with_label_values(&[gate, decision]))
}

fn direction_of(d: Option<TrafficDirection>) -> Direction {
    match d.unwrap_or_default() {
        TrafficDirection::Inbound => Direction::Inbound,
        TrafficDirection::Outbound => Direction::Outbound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::PolicyMetrics, request::testing::TestRequest};

    fn compile(yaml: &str) -> Result<FlagGates, (PolicySource, CompileError)> {
        compile_counted(yaml, &PolicyMetrics::unregistered())
    }

    fn compile_counted(
        yaml: &str,
        metrics: &PolicyMetrics,
    ) -> Result<FlagGates, (PolicySource, CompileError)> {
        FlagGates::compile(
            &[Sourced {
                source: PolicySource {
                    namespace: "shop".into(),
                    name: "flags".into(),
                    generation: 1,
                },
                spec: serde_yaml::from_str(yaml).unwrap(),
            }],
            &JwtKeys::new(),
            &CompileEnv::local(metrics),
        )
    }

    const ROLLOUT: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting:
      if:
      - {"==": [{"var": "plan"}, "pro"]}
      - "on"
      - {"fractional": [["on", 50], ["off", 50]]}
  retired:
    state: DISABLED
    variants: {"on": true}
    defaultVariant: "on"
context:
  targetingKey: {type: Header, name: X-User-Id}
  attributes:
  - name: plan
    from: {type: Cookie, name: plan}
gates:
- name: checkout-v2
  match: {path: {type: PathPrefix, value: /checkout/v2}}
  flag: new-checkout
  allowedVariants: ["on"]
- name: old-admin
  match: {path: {type: PathPrefix, value: /admin}}
  flag: retired
  allowedVariants: ["on"]
  deny: {statusCode: 403, body: "no\n"}
injectHeaders:
- flag: new-checkout
  header: X-Flag-New-Checkout
"#;

    fn decide(gates: &FlagGates, path: &str, headers: &[(&'static str, &str)]) -> GateDecision {
        gates.decide(
            &TestRequest::new(path).headers(headers).view(),
            Direction::Inbound,
            1_764_900_000,
        )
    }

    fn variant(d: &GateDecision) -> Option<&str> {
        d.request_headers
            .iter()
            .find(|(n, _)| n == "x-flag-new-checkout")
            .and_then(|(_, v)| v.as_deref())
    }

    #[test]
    fn decisions_and_evaluations_are_counted_by_their_labels() {
        let metrics = PolicyMetrics::unregistered();
        let gates = compile_counted(ROLLOUT, &metrics).unwrap();
        let pro = [("x-user-id", "u1"), ("cookie", "plan=pro")];
        for _ in 0..3 {
            decide(&gates, "/checkout/v2/pay", &pro);
        }
        decide(&gates, "/admin", &pro);
        let evaluations =
            |labels: [&str; 3]| metrics.flags.evaluations.with_label_values(&labels).get();
        let decisions = |labels: [&str; 2]| {
            metrics
                .flags
                .gate_decisions
                .with_label_values(&labels)
                .get()
        };
        // Evaluated once per request, for the gate and the header alike.
        assert_eq!(evaluations(["new-checkout", "on", "TARGETING_MATCH"]), 4);
        assert_eq!(evaluations(["retired", "", "DISABLED"]), 1);
        assert_eq!(decisions(["checkout-v2", "allowed"]), 3);
        assert_eq!(decisions(["checkout-v2", "denied"]), 0);
        assert_eq!(decisions(["old-admin", "denied"]), 1);
    }

    #[test]
    fn gates_let_allowed_variants_through_and_deny_the_rest() {
        let gates = compile(ROLLOUT).unwrap();
        // The cookie attribute targets: a pro user is "on" whatever the bucket.
        let pro = decide(
            &gates,
            "/checkout/v2/cart",
            &[("cookie", "plan=pro"), ("x-user-id", "u1")],
        );
        assert_eq!(pro.reply, None);
        assert_eq!(variant(&pro), Some("on"));
        // Others are split by their targeting key; the same user always lands the same way.
        let mut seen = std::collections::BTreeMap::new();
        for user in 0..200 {
            let user = format!("user-{user}");
            let d = decide(&gates, "/checkout/v2/cart", &[("x-user-id", &user)]);
            let again = decide(&gates, "/checkout/v2/cart", &[("x-user-id", &user)]);
            assert_eq!(d, again);
            match (&d.reply, variant(&d)) {
                (None, v) => assert_eq!(v, Some("on")),
                (Some(reply), None) => {
                    assert_eq!(reply.status, 404);
                    assert_eq!(reply.header("bulwark-reason"), Some("flag_gated"));
                    assert!(reply.body.is_empty());
                }
                other => panic!("{other:?}"),
            }
            *seen.entry(d.reply.is_none()).or_insert(0) += 1;
        }
        assert!(seen[&true] > 60 && seen[&false] > 60, "{seen:?}");
        // Routes no gate matches pass, with the header.
        let other = decide(&gates, "/catalog", &[("x-user-id", "user-1")]);
        assert_eq!(other.reply, None);
        assert!(variant(&other).is_some());
    }

    #[test]
    fn a_flag_without_a_variant_fails_closed_and_removes_its_header() {
        let gates = compile(ROLLOUT).unwrap();
        let admin = decide(&gates, "/admin/users", &[]);
        let reply = admin.reply.expect("a disabled flag denies");
        assert_eq!((reply.status, reply.body.as_str()), (403, "no\n"));

        let disabled_header = compile(&ROLLOUT.replace(
            "    state: ENABLED\n    variants: {\"on\": true, \"off\": false}",
            "    state: DISABLED\n    variants: {\"on\": true, \"off\": false}",
        ))
        .unwrap();
        let d = decide(
            &disabled_header,
            "/catalog",
            &[("x-flag-new-checkout", "on")],
        );
        assert_eq!(d.reply, None);
        assert_eq!(
            d.request_headers,
            vec![(HeaderName::from_static("x-flag-new-checkout"), None)]
        );
    }

    #[test]
    fn the_context_reads_headers_the_ambiguity_check_must_cover() {
        let gates = compile(ROLLOUT).unwrap();
        let read: Vec<&str> = gates.headers_read().map(HeaderName::as_str).collect();
        // As for rate-limit keys: named headers (not `Cookie`, which HTTP/2 splits by design).
        assert_eq!(read, ["x-user-id"]);
    }

    #[test]
    fn rules_apply_to_their_direction_only() {
        let gates = compile(&ROLLOUT.replace(
            "  header: X-Flag-New-Checkout",
            "  header: X-Flag-New-Checkout\n  direction: Outbound",
        ))
        .unwrap();
        let req = TestRequest::new("/catalog").header("x-user-id", "u1");
        let inbound = gates.decide(&req.view(), Direction::Inbound, 1_764_900_000);
        assert!(
            inbound.request_headers.is_empty(),
            "the header is outbound only"
        );
        let outbound = gates.decide(&req.view(), Direction::Outbound, 1_764_900_000);
        assert_eq!(outbound.request_headers.len(), 1);
        let admin = TestRequest::new("/admin/x").header("x-user-id", "u1");
        let gated = gates.decide(&admin.view(), Direction::Outbound, 1_764_900_000);
        assert_eq!(
            gated.reply, None,
            "the /admin gate is inbound (the default)"
        );
    }

    #[test]
    fn a_gate_with_route_to_names_the_upstream_instead_of_denying() {
        let gates = compile(&ROLLOUT.replace(
            "  deny: {statusCode: 403, body: \"no\\n\"}",
            "  routeTo: canary",
        ))
        .unwrap();
        let routed = decide(&gates, "/admin/users", &[("x-user-id", "u1")]);
        assert_eq!(routed.reply, None, "routeTo never denies");
        let to = routed
            .route_to
            .expect("the retired flag never allows: routed");
        assert_eq!((&*to.namespace, &*to.name), ("shop", "canary"));
        assert_eq!(
            decide(&gates, "/other", &[("x-user-id", "u1")]).route_to,
            None,
            "only matching requests"
        );
    }
}
