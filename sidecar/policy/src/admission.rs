//! The one place that decides what happens to a request, in a fixed order:
//!
//! 0. headers the policy reads must be unambiguous ([`crate::request::headers`]),
//! 1. feature-flag gates,
//! 2. rate limits,
//! 3. quotas,
//! 4. what to set on the upstream request (flag variants in headers),
//! 5. where it goes (outbound: the failover upstream the call matches; inbound: the app, or
//!    the upstream a gate's `routeTo` names),
//! 6. what to add to the response, and what to charge once it is sent.
//!
//! Each listener builds one [`RequestView`] per request and calls [`Runtime::admit`]; the proxy
//! phases only carry out the [`Admission`]. Rate limits and quotas select pods and govern the
//! traffic that comes in to the app, so they apply to the inbound listener; the app's own calls
//! (outbound) pass through the same pipeline: the gates and headers whose `direction` is
//! `Outbound`, then failover decides their route.

use std::{sync::Arc, time::Instant};

use http::HeaderName;

use crate::{
    failover::upstream::Upstream,
    quota::{
        engine::{Exchanged, RequestQuotas},
        usage::UsageStore,
    },
    ratelimit::engine::AppliedLimit,
    request::RequestView,
    respond::{Reason, Reply},
    runtime::Runtime,
};

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Clients calling the app.
    Inbound,
    /// The app calling other services.
    Outbound,
}

/// What the pipeline decided for one request.
#[derive(Default)]
pub struct Admission {
    /// `Some`: the sidecar answers with this instead of forwarding the request.
    pub reply: Option<Reply>,
    /// Headers to set on the request to the app; `None` removes any the client sent.
    pub request_headers: Vec<(HeaderName, Option<String>)>,
    /// What the response carries, and what is charged after it.
    pub response: ResponseEffects,
    /// The failover upstream that takes the request: outbound, the one its `match` selects;
    /// inbound, a flag gate's `routeTo`. `None`: the destination named, or the app.
    pub upstream: Option<Arc<Upstream>>,
}

/// A header to set on the app's response.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    /// Replaces any header of that name the app sent (the limit the sidecar enforces wins).
    Set(&'static str, &'a str),
    /// Added beside the app's own.
    Append(&'static str, &'a str),
}

/// The decisions that act after the request was forwarded.
#[derive(Default)]
pub struct ResponseEffects {
    /// The limit whose headers go on the app's response.
    rate_limit: Option<AppliedLimit>,
    /// Quota warnings for the response, and charges made after it.
    quota: RequestQuotas,
}

impl ResponseEffects {
    /// Applies the response's headers through `edit`, in order (rendered now, not while
    /// deciding).
    pub fn edit_headers<E>(
        &self,
        mut edit: impl FnMut(HeaderEdit<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(limit) = &self.rate_limit {
            for (name, value) in &limit.headers() {
                edit(HeaderEdit::Set(name, value))?;
            }
        }
        for (name, value) in self.quota.response_headers() {
            edit(HeaderEdit::Append(name, value))?;
        }
        Ok(())
    }

    /// True when something is charged after the response (bytes, deferred quotas).
    pub fn has_deferred(&self) -> bool {
        self.quota.has_deferred()
    }

    /// Whether settling needs the exchange's gRPC messages counted.
    pub fn counts_messages(&self) -> bool {
        self.quota.counts_messages()
    }

    /// Charges what depends on the exchange's size.
    pub async fn settle(self, usage: &UsageStore, exchanged: Exchanged) {
        self.quota.settle(usage, exchanged).await;
    }
}

impl Runtime {
    /// Decides `req` at `now` (Unix nanoseconds) against the installed policy.
    pub async fn admit(&self, direction: Direction, req: &RequestView<'_>, now: u64) -> Admission {
        let mut admission = Admission::default();
        let policy = self.policy();
        // The app's own calls are not second-guessed: a client's duplicated header is what
        // could make the app read a request differently from the policy.
        if direction == Direction::Inbound
            && let Some(why) = policy.read_headers.ambiguity(req.headers)
        {
            admission.reply = Some(Reply::new(Reason::BadRequest, Some(&why)));
            return admission;
        }
        if !policy.flag_gates.is_empty() {
            let gated = policy
                .flag_gates
                .decide(req, direction, (now / 1_000_000_000) as i64);
            if gated.reply.is_some() {
                admission.reply = gated.reply;
                return admission;
            }
            admission.request_headers = gated.request_headers;
            if let Some(to) = gated.route_to {
                let Some(upstream) = policy.failover.named(&to.namespace, &to.name) else {
                    // Fail closed, as a gate does: the rollout's other side is not defined.
                    let why = format!(
                        "the gate routes to upstream {:?}, which no FailoverPolicy of namespace {} defines for this pod",
                        to.name, to.namespace
                    );
                    admission.reply = Some(Reply::new(Reason::FlagGated, Some(&why)));
                    return admission;
                };
                admission.upstream = Some(upstream.clone());
            }
        }
        if direction == Direction::Outbound {
            // Rate limits and quotas select pods and govern the app's inbound traffic.
            if admission.upstream.is_none() {
                admission.upstream = policy.failover.route(req).cloned();
            }
            return admission;
        }
        if !policy.rate_limits.is_empty() {
            let started = Instant::now();
            let pending = policy
                .rate_limits
                .begin(req, &self.counters, Some(&self.fast), now);
            let decision = if pending.needs_redis() {
                pending.finish().await
            } else {
                pending.finish_local()
            };
            self.metrics
                .ratelimit
                .decision_seconds
                .observe(started.elapsed().as_secs_f64());
            if decision.reject.is_some() {
                admission.reply = decision.reject;
                return admission;
            }
            admission.response.rate_limit = decision.applied;
        }
        if !policy.quotas.is_empty() {
            let decision = policy.quotas.decide(req, &self.quota_usage, now).await;
            admission.response.quota = decision.pending;
            if decision.reject.is_some() {
                admission.reply = decision.reject;
            }
        }
        admission
    }
}
