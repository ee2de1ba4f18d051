//! One endpoint of an upstream and what is known about it: its health by active probes and its
//! ejection by outlier detection. Kept across snapshots (an
//! endpoint that stays in a group keeps its health and ejection), read lock-free on every pick.

use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
};

use prometheus::IntCounter;

use super::outlier::{CallResult, EndpointOutlier, OutlierConfig};
use crate::lock::lock;

/// Where an endpoint is: an IP address (a Service's endpoints, or a static IP), or a DNS name
/// the proxy resolves through its cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Socket(SocketAddr),
    Name { host: String, port: u16 },
}

impl Address {
    /// `ip:port`, `[ipv6]:port` or `host:port` (the CRD's pattern has already checked the form).
    pub fn parse(s: &str) -> Option<Self> {
        if let Ok(socket) = s.parse::<SocketAddr>() {
            return Some(Self::Socket(socket));
        }
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse().ok()?;
        (!host.is_empty() && !host.starts_with('[')).then(|| Self::Name {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(a) => write!(f, "{a}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// What active health checks say of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet (or no health check): counts as healthy, so a new endpoint takes traffic
    /// at once and a rollout does not wait a probe interval (docs/failover.md says why).
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Health {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Healthy,
            2 => Self::Unhealthy,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// Consecutive probe results since the last change of health.
#[derive(Default)]
struct ProbeStreak {
    successes: u32,
    failures: u32,
}

/// The outcome of one try, by class (metric label values).
pub const RESULTS: [&str; 8] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "connect_failure",
    "reset",
    "timeout",
];

/// A gRPC answer is counted by the HTTP status its code maps to (`UNAVAILABLE` as `5xx`).
pub(crate) fn result_index(result: CallResult) -> usize {
    match (result, result.status()) {
        (_, Some(s)) => usize::from((s / 100).clamp(1, 5) - 1),
        (CallResult::ConnectFailure, None) => 5,
        (CallResult::Reset, None) => 6,
        _ => 7,
    }
}

pub struct EndpointState {
    pub address: Address,
    health: AtomicU8,
    streak: Mutex<ProbeStreak>,
    outlier: Mutex<EndpointOutlier>,
    /// Unix nanoseconds the current ejection ends; 0 when not ejected. A copy of the outlier
    /// state's, so picks read it without a lock.
    ejected_until: AtomicU64,
    /// When the health checker probes next (Unix nanoseconds; 0: at once).
    pub next_probe: AtomicU64,
    /// Tries in flight (for `LeastRequest`).
    in_flight: AtomicU32,
    /// Tries by [`RESULTS`].
    tries: [IntCounter; RESULTS.len()],
    ejections: IntCounter,
}

impl EndpointState {
    pub fn new(
        address: Address,
        tries: [IntCounter; RESULTS.len()],
        ejections: IntCounter,
    ) -> Self {
        Self {
            address,
            health: AtomicU8::new(Health::Unknown as u8),
            streak: Mutex::default(),
            outlier: Mutex::default(),
            ejected_until: AtomicU64::new(0),
            next_probe: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            tries,
            ejections,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A try starts (paired with [`EndpointState::try_ended`]).
    pub fn try_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn try_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    /// True when the endpoint takes traffic: not known unhealthy, not ejected.
    pub fn is_available(&self, now: u64) -> bool {
        self.health() != Health::Unhealthy && !self.is_ejected(now)
    }

    /// When the current ejection ends, if the endpoint is ejected at `now`.
    pub fn ejected_until(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (now < until).then_some(until)
    }

    /// A probe's result; returns the new health when it changed (`healthy`/`unhealthy`
    /// consecutive results are needed, from any state: Unknown moves on the first threshold
    /// reached).
    pub fn record_probe(
        &self,
        ok: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<Health> {
        let mut streak = lock(&self.streak);
        let current = self.health();
        let next = if ok {
            streak.failures = 0;
            streak.successes = streak.successes.saturating_add(1);
            (current != Health::Healthy && streak.successes >= healthy_after)
                .then_some(Health::Healthy)
        } else {
            streak.successes = 0;
            streak.failures = streak.failures.saturating_add(1);
            (current != Health::Unhealthy && streak.failures >= unhealthy_after)
                .then_some(Health::Unhealthy)
        };
        if let Some(health) = next {
            self.health.store(health as u8, Ordering::Relaxed);
        }
        next
    }

    /// A real call's result: counted, and fed to outlier detection when it is on. True when
    /// this result ejected the endpoint.
    pub fn record_call(
        &self,
        result: CallResult,
        outlier: Option<&OutlierConfig>,
        now: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        self.tries[result_index(result)].inc();
        let Some(config) = outlier else { return false };
        let mut state = lock(&self.outlier);
        // The group's ejection cap is only counted after a failure (the only result that ejects).
        let failure = !matches!(result.status(), Some(s) if s < 500);
        let may = failure && may_eject();
        let ejected = state.record(config, result, now, may);
        if ejected {
            let until = state.ejected_until().unwrap_or(now);
            self.ejected_until.store(until, Ordering::Relaxed);
            self.ejections.inc();
        }
        ejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointState {
        let c = || IntCounter::new("t", "t").unwrap();
        EndpointState::new(
            Address::parse("10.0.0.1:80").unwrap(),
            std::array::from_fn(|_| c()),
            c(),
        )
    }

    #[test]
    fn addresses_parse_as_ip_or_name() {
        assert_eq!(
            Address::parse("[::1]:8080"),
            Some(Address::Socket("[::1]:8080".parse().unwrap()))
        );
        assert_eq!(
            Address::parse("billing.internal:80"),
            Some(Address::Name {
                host: "billing.internal".into(),
                port: 80
            })
        );
        assert_eq!(Address::parse("billing.internal"), None);
        assert_eq!(Address::parse("[::1:80"), None);
    }

    #[test]
    fn health_moves_only_after_its_threshold_of_consecutive_probes() {
        let e = endpoint();
        assert!(e.is_available(0), "unknown counts as available");
        assert_eq!(e.record_probe(false, 2, 3), None);
        assert_eq!(e.record_probe(false, 2, 3), None);
        assert_eq!(
            e.record_probe(true, 2, 3),
            None,
            "a success breaks the streak"
        );
        for _ in 0..2 {
            assert_eq!(e.record_probe(false, 2, 3), None);
        }
        assert_eq!(e.record_probe(false, 2, 3), Some(Health::Unhealthy));
        assert!(!e.is_available(0));
        assert_eq!(e.record_probe(true, 2, 3), None);
        assert_eq!(e.record_probe(true, 2, 3), Some(Health::Healthy));
        assert_eq!(e.record_probe(true, 2, 3), None, "no change, no report");
    }

    #[test]
    fn results_are_counted_by_class() {
        assert_eq!(RESULTS[result_index(CallResult::Status(204))], "2xx");
        assert_eq!(RESULTS[result_index(CallResult::Status(503))], "5xx");
        assert_eq!(RESULTS[result_index(CallResult::Status(101))], "1xx");
        assert_eq!(RESULTS[result_index(CallResult::Timeout)], "timeout");
    }
}
