//! Active health checks of the failover upstreams' endpoints: one background task, started
//! once, probes every endpoint of the installed policy that has a `healthCheck` at its interval
//! (with jitter, so a group's probes do not synchronise), by HTTP GET or by a TCP connect.
//! Endpoints and their health live in the policy's state ([`bulwark_policy::failover`]); a new
//! endpoint is probed at once, and counts as healthy until probes say otherwise.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use async_trait::async_trait;
use bulwark_policy::{
    clock::unix_nanos,
    failover::{
        endpoint::{Address, EndpointState},
        settings::{HealthSettings, HttpProbe},
        upstream::Upstream,
    },
    runtime::Runtime,
    task::{BackgroundTask, Shutdown},
};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::dns::DnsCache;

/// How often the task looks for endpoints due a probe: the finest interval it honours.
const TICK: Duration = Duration::from_millis(50);

pub struct HealthChecker {
    pub runtime: Arc<Runtime>,
    pub dns: Arc<DnsCache>,
}

#[async_trait]
impl BackgroundTask for HealthChecker {
    async fn run(&self, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.start_due_probes();
        }
    }
}

impl HealthChecker {
    fn start_due_probes(&self) {
        let policy = self.runtime.policy();
        let now = unix_nanos();
        for upstream in policy.failover.upstreams() {
            let Some(health) = &upstream.compiled.settings.health else {
                continue;
            };
            for endpoint in upstream.groups.iter().flat_map(|g| &g.endpoints) {
                let state = &endpoint.state;
                let due = state.next_probe.load(std::sync::atomic::Ordering::Relaxed);
                if due > now {
                    continue;
                }
                let next = now.saturating_add(jittered(health.interval, health.jitter_percent));
                state
                    .next_probe
                    .store(next, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(probe(
                    upstream.clone(),
                    state.clone(),
                    health.clone(),
                    self.dns.clone(),
                ));
            }
        }
    }
}

/// `interval` ± `percent`% (uniform), in nanoseconds.
fn jittered(interval: Duration, percent: u8) -> u64 {
    let base = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    let spread = base / 100 * u64::from(percent);
    if spread == 0 {
        return base;
    }
    base - spread + fastrand::u64(0..=2 * spread)
}

async fn probe(
    upstream: Arc<Upstream>,
    endpoint: Arc<EndpointState>,
    health: HealthSettings,
    dns: Arc<DnsCache>,
) {
    let outcome = tokio::time::timeout(health.timeout, async {
        let addr = match &endpoint.address {
            Address::Socket(addr) => *addr,
            Address::Name { host, port } => dns
                .resolve(host, *port)
                .await
                .map_err(|e| format!("cannot resolve: {e}"))?,
        };
        match &health.http {
            None => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect: {e}")),
            Some(http) => http_probe(addr, &endpoint.address, http).await,
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {:?}", health.timeout)));
    upstream.record_probe(&endpoint, outcome, &health);
}

/// `GET path` on a new connection; healthy when the status is expected.
async fn http_probe(addr: SocketAddr, address: &Address, probe: &HttpProbe) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // Ends with the probe: the connection is closed when this future is dropped.
    let connection = tokio::spawn(connection);
    let host = probe.host.clone().unwrap_or_else(|| address.to_string());
    let request = http::Request::get(probe.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "bulwark-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender.send_request(request).await;
    connection.abort();
    let status = response
        .map_err(|e| format!("request: {e}"))?
        .status()
        .as_u16();
    if probe.healthy(status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_percentage() {
        let interval = Duration::from_secs(1);
        for _ in 0..1000 {
            let n = jittered(interval, 10);
            assert!((900_000_000..=1_100_000_000).contains(&n), "{n}");
        }
        assert_eq!(jittered(interval, 0), 1_000_000_000);
    }
}
