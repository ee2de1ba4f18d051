//! One outbound call through an upstream, try by try: a bulkhead slot, the circuit breaker's
//! permission, the endpoint of each try, and after each try whether to retry and after how
//! long. The breaker judges calls, not tries: a call that failed over and succeeded is a
//! success (single endpoints' failures are outlier detection's to judge; the breaker stops
//! calls when the upstream as a whole fails). The proxy
//! carries out the tries; every decision is made here, so it is tested without one.
//!
//! Retries follow the upstream's `retry`: a retriable class of failure, tries left, an
//! idempotent method (a connect failure excepted: nothing was sent), a request body the proxy
//! still holds, time left before the request deadline, a breaker that is not open, and the
//! retry budget (not charged for a connect failure: see `retry_decision`). The backoff is exponential with full jitter (AWS's "full jitter": a uniform
//! draw in `[0, min(max, base·2^n)]`), or the upstream's `Retry-After` on a 429 when it fits in
//! the time left.

use std::{sync::Arc, time::Duration};

use tokio::sync::OwnedSemaphorePermit;

use super::{
    bulkhead::Full,
    outlier::CallResult,
    upstream::{Pick, Upstream},
};
use crate::{
    lock::lock,
    respond::{Reason, Reply},
};

/// What the proxy does after a try.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again (another endpoint when one is available) after this delay.
    Retry(Duration),
    /// Pass the try's result to the app.
    Done,
}

pub struct Call {
    upstream: Arc<Upstream>,
    /// Unix nanoseconds by which the call must have its answer.
    deadline: u64,
    tried: Vec<Pick>,
    try_started: u64,
    /// A try is in flight (counted in its endpoint's `in_flight`).
    in_try: bool,
    /// Unix nanoseconds the call started.
    started: u64,
    /// The breaker let this call through and has not had its outcome yet.
    breaker_permit: bool,
    idempotent: bool,
    /// The bulkhead slot, freed when the call is dropped.
    _slot: Option<OwnedSemaphorePermit>,
}

fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Upstream {
    /// Starts a call at `now` (Unix nanoseconds) and picks its first endpoint; or the sidecar's
    /// answer when none can be tried (bulkhead full, circuit open, no endpoint available).
    pub async fn call(self: &Arc<Self>, method: &str, now: u64) -> Result<Call, Reply> {
        let compiled = &self.compiled;
        let slot = match &compiled.bulkhead {
            None => None,
            Some(bulkhead) => match bulkhead.enter().await {
                Ok(slot) => Some(slot),
                Err(Full::Rejected | Full::QueueTimeout) => {
                    compiled.metrics.refused(Reason::BulkheadFull);
                    return Err(Reply::new(Reason::BulkheadFull, None));
                }
            },
        };
        // The deadline counts from the call's start: time waiting in the queue is spent, as it is
        // for the app.
        lock(&compiled.budget).record_request(now);
        let mut call = Call {
            upstream: self.clone(),
            deadline: now.saturating_add(nanos(compiled.settings.timeouts.request)),
            tried: Vec::with_capacity(1),
            try_started: now,
            in_try: false,
            started: now,
            breaker_permit: false,
            idempotent: is_idempotent(method),
            _slot: slot,
        };
        if let Some(breaker) = &compiled.breaker {
            let mut breaker = lock(breaker);
            let before = breaker.state(now);
            let admitted = breaker.try_acquire(now);
            let after = breaker.state(now);
            drop(breaker);
            if after != before {
                compiled.metrics.breaker_entered(after);
            }
            if admitted.is_err() {
                return Err(compiled.fallback(Reason::CircuitOpen));
            }
            call.breaker_permit = true;
        }
        call.next_try(now)?;
        Ok(call)
    }
}

impl Call {
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The endpoint of the current try.
    pub fn endpoint(&self) -> &super::upstream::Endpoint {
        let pick = *self.tried.last().expect("a call has a try from its start");
        self.upstream.endpoint(pick)
    }

    /// Tries made so far, the current one included.
    pub fn tries(&self) -> usize {
        self.tried.len()
    }

    /// Brings the call's deadline forward to `timeout` after its start (a gRPC call's
    /// `grpc-timeout`): no try or retry outlives the caller's own deadline.
    pub fn limit_to(&mut self, timeout: Duration) {
        self.deadline = self
            .deadline
            .min(self.started.saturating_add(nanos(timeout)));
    }

    /// How long the current try may take: `perTry`, within what is left of the request's time.
    pub fn try_timeout(&self, now: u64) -> Duration {
        let left = Duration::from_nanos(self.deadline.saturating_sub(now));
        self.upstream.compiled.settings.timeouts.per_try.min(left)
    }

    /// Starts the next try at `now`: an endpoint must be available (another than those tried,
    /// when there is one).
    pub fn next_try(&mut self, now: u64) -> Result<(), Reply> {
        let compiled = &self.upstream.compiled;
        let pick = self
            .upstream
            .pick(now, &self.tried)
            .ok_or_else(|| compiled.fallback(Reason::NoHealthyUpstream))?;
        self.tried.push(pick);
        self.try_started = now;
        self.upstream.endpoint(pick).state.try_started();
        self.in_try = true;
        Ok(())
    }

    /// Records the current try's `result` at `now` and decides what follows. `replayable`: the
    /// proxy still holds the whole request body. `retry_after`: a 429's `Retry-After`.
    pub fn finish_try(
        &mut self,
        result: CallResult,
        retry_after: Option<Duration>,
        replayable: bool,
        now: u64,
    ) -> Next {
        self.end_try();
        let compiled = &self.upstream.compiled;
        let pick = *self.tried.last().expect("a call has a try from its start");
        let elapsed = now.saturating_sub(self.try_started);
        compiled
            .metrics
            .try_seconds
            .observe(Duration::from_nanos(elapsed).as_secs_f64());
        let failed = !matches!(result.status(), Some(s) if s < 500);
        self.upstream.endpoint(pick).state.record_call(
            result,
            compiled.settings.outlier.as_ref(),
            now,
            || self.upstream.may_eject(pick.group, now),
        );
        let next = self.retry_decision(result, retry_after, replayable, now);
        if next == Next::Done {
            self.record_outcome(failed, now);
        }
        next
    }

    /// The call's outcome, for the breaker (once).
    fn record_outcome(&mut self, failed: bool, now: u64) {
        let compiled = &self.upstream.compiled;
        if std::mem::take(&mut self.breaker_permit)
            && let Some(breaker) = &compiled.breaker
            && let Some(state) = lock(breaker).record(failed, now.saturating_sub(self.started), now)
        {
            compiled.metrics.breaker_entered(state);
        }
    }

    fn end_try(&mut self) {
        if std::mem::take(&mut self.in_try)
            && let Some(pick) = self.tried.last()
        {
            self.upstream.endpoint(*pick).state.try_ended();
        }
    }

    fn retry_decision(
        &self,
        result: CallResult,
        retry_after: Option<Duration>,
        replayable: bool,
        now: u64,
    ) -> Next {
        let compiled = &self.upstream.compiled;
        let retry = &compiled.settings.retry;
        let retriable = match result {
            CallResult::ConnectFailure => retry.on_connect_failure,
            CallResult::Reset => retry.on_reset,
            CallResult::Timeout => retry.on_timeout,
            CallResult::Status(status) => retry.retries_status(status),
            CallResult::Grpc(code) => retry.retries_grpc(code),
        };
        let retries = self.tried.len() as u32 - 1;
        // Every gRPC call is a POST: a gRPC class listed in `retryOn` says its calls may be
        // retried, as gRPC's own retry policy does (the server answered with an error status,
        // trailers-only, so nothing reached the client yet).
        let method_allows = self.idempotent
            || retry.non_idempotent
            || matches!(result, CallResult::ConnectFailure | CallResult::Grpc(_));
        if !retriable || retries >= retry.attempts || !method_allows || !replayable {
            return Next::Done;
        }
        let delay = match retry_after.filter(|_| result == CallResult::Status(429)) {
            Some(delay) => delay,
            None => {
                let ceiling = retry
                    .backoff_base_nanos
                    .saturating_mul(1 << retries.min(32))
                    .min(retry.backoff_max_nanos);
                Duration::from_nanos(fastrand::u64(0..=ceiling))
            }
        };
        if now.saturating_add(nanos(delay)) >= self.deadline {
            return Next::Done;
        }
        if let Some(breaker) = &compiled.breaker
            && lock(breaker).state(now) == super::breaker::BreakerState::Open
        {
            return Next::Done; // fail fast: the app gets this try's answer
        }
        // A connect failure is a requeue, as Finagle calls it: the request never reached the
        // upstream, so trying another endpoint adds no load to the failing one, and the budget
        // (which exists to stop retries from piling load on a struggling upstream) is not
        // charged. Without this, a killed primary group would spend the budget in a second and
        // fail calls that the standby group could serve.
        let requeue = result == CallResult::ConnectFailure;
        if !requeue && !lock(&compiled.budget).try_retry(now) {
            compiled.metrics.budget_exhausted.inc();
            return Next::Done;
        }
        compiled.metrics.retries.inc();
        Next::Retry(delay)
    }
}

impl Drop for Call {
    /// A call dropped mid-try (the client went away, or a retry found nothing to try) ends its
    /// try's count and gives the breaker's permission back.
    fn drop(&mut self) {
        self.end_try();
        if std::mem::take(&mut self.breaker_permit)
            && let Some(breaker) = &self.upstream.compiled.breaker
        {
            lock(breaker).release();
        }
    }
}
