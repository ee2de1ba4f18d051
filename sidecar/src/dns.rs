//! Name resolution for the outbound listener, cached.
//!
//! Without a cache every outbound call would wait for `getaddrinfo` on tokio's blocking pool,
//! and in a pod (`ndots: 5`) one service name is several queries to the cluster DNS. Answers are
//! kept for [`TTL`], as Envoy refreshes `STRICT_DNS` clusters every 5 s by default (getaddrinfo
//! gives no record TTL). When a refresh fails, the last answer keeps serving for up to
//! [`STALE_FOR`], so a DNS hiccup does not fail calls to a service that was just reachable; a
//! resolver that does not answer within [`RESOLVE_TIMEOUT`] counts as failing.
//! IP literals never reach the resolver.

use bulwark_policy::lock::lock;
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long an answer is used before it is resolved again.
pub const TTL: Duration = Duration::from_secs(5);

/// How long an answer may outlive its TTL while resolving fails.
pub const STALE_FOR: Duration = Duration::from_secs(60);

/// How long a call waits for the resolver: an unreachable DNS server must fail the call, not
/// hold it for glibc's retries (5 s per server and attempt).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Names held at most; a full cache is emptied (a few thousand distinct destinations means the
/// app is not calling a fixed set of services, and a cache would not help it).
const CAPACITY: usize = 4096;

#[derive(Default)]
pub struct DnsCache {
    answers: Mutex<HashMap<(String, u16), Answer>>,
}

#[derive(Clone, Copy)]
struct Answer {
    addr: SocketAddr,
    resolved_at: Instant,
}

impl DnsCache {
    /// The address `host:port` resolves to (the first answer, as a plain connect would use).
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if let Some(addr) = self.fresh(host, port, Instant::now()) {
            return Ok(addr);
        }
        let resolved = tokio::net::lookup_host((host, port))
            .await
            .and_then(|mut addrs| {
                addrs.next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the name has no address")
                })
            });
        self.settle(host, port, resolved, Instant::now())
    }

    /// The cached answer, if it is younger than [`TTL`] at `now`.
    fn fresh(&self, host: &str, port: u16, now: Instant) -> Option<SocketAddr> {
        let answers = lock(&self.answers);
        let answer = answers.get(&(host.to_owned(), port))?;
        (now.duration_since(answer.resolved_at) < TTL).then_some(answer.addr)
    }

    /// Records a resolution made at `now`: a success replaces the answer; a failure falls back
    /// to the last answer while it is within [`TTL`] + [`STALE_FOR`].
    fn settle(
        &self,
        host: &str,
        port: u16,
        resolved: io::Result<SocketAddr>,
        now: Instant,
    ) -> io::Result<SocketAddr> {
        let mut answers = lock(&self.answers);
        let key = (host.to_owned(), port);
        match resolved {
            Ok(addr) => {
                if answers.len() >= CAPACITY && !answers.contains_key(&key) {
                    answers.clear();
                }
                answers.insert(
                    key,
                    Answer {
                        addr,
                        resolved_at: now,
                    },
                );
                Ok(addr)
            }
            Err(e) => match answers.get(&key) {
                Some(answer) if now.duration_since(answer.resolved_at) < TTL + STALE_FOR => {
                    tracing::warn!(host, port, error = %e, "resolving failed; using the last answer");
                    Ok(answer.addr)
                }
                _ => {
                    answers.remove(&key);
                    Err(e)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn failure() -> io::Result<SocketAddr> {
        Err(io::Error::other("SERVFAIL"))
    }

    #[test]
    fn an_answer_is_fresh_for_its_ttl_then_resolved_again() {
        let cache = DnsCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.fresh("api", 80, t0), None);
        cache
            .settle("api", 80, Ok(addr("10.0.0.1:80")), t0)
            .unwrap();
        assert_eq!(
            cache.fresh("api", 80, t0 + TTL / 2),
            Some(addr("10.0.0.1:80"))
        );
        assert_eq!(
            cache.fresh("api", 81, t0),
            None,
            "the port is part of the name"
        );
        assert_eq!(cache.fresh("api", 80, t0 + TTL), None);
        cache
            .settle("api", 80, Ok(addr("10.0.0.2:80")), t0 + TTL)
            .unwrap();
        assert_eq!(cache.fresh("api", 80, t0 + TTL), Some(addr("10.0.0.2:80")));
    }

    #[test]
    fn a_failed_refresh_serves_the_last_answer_for_a_while() {
        let cache = DnsCache::default();
        let t0 = Instant::now();
        assert!(
            cache.settle("api", 80, failure(), t0).is_err(),
            "nothing to fall back on"
        );
        cache
            .settle("api", 80, Ok(addr("10.0.0.1:80")), t0)
            .unwrap();
        let later = t0 + TTL + STALE_FOR - Duration::from_secs(1);
        assert_eq!(
            cache.settle("api", 80, failure(), later).unwrap(),
            addr("10.0.0.1:80")
        );
        assert!(
            cache
                .settle("api", 80, failure(), t0 + TTL + STALE_FOR)
                .is_err()
        );
        assert!(
            cache.settle("api", 80, failure(), t0).is_err(),
            "an expired answer is forgotten"
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = DnsCache::default();
        let t0 = Instant::now();
        for i in 0..CAPACITY + 10 {
            cache
                .settle(&format!("svc-{i}"), 80, Ok(addr("10.0.0.1:80")), t0)
                .unwrap();
            assert!(cache.answers.lock().unwrap().len() <= CAPACITY);
        }
    }

    #[tokio::test]
    async fn ip_literals_and_localhost_resolve() {
        let cache = DnsCache::default();
        assert_eq!(
            cache.resolve("127.0.0.1", 8080).await.unwrap(),
            addr("127.0.0.1:8080")
        );
        assert_eq!(
            cache.resolve("[::1]", 8080).await.unwrap(),
            addr("[::1]:8080")
        );
        assert!(
            cache.answers.lock().unwrap().is_empty(),
            "literals are not cached"
        );
        let local = cache.resolve("localhost", 8080).await.unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8080, "{local}");
        assert_eq!(cache.fresh("localhost", 8080, Instant::now()), Some(local));
    }
}
