//! The Redis connection shared by `Global` rate limits and quotas.
//!
//! One multiplexed connection per sidecar (Redis pipelines concurrent requests on it), created
//! lazily and re-established in the background, so a sidecar starts and serves while Redis is
//! down. Every call is bounded by the caller's timeout: Redis being slow or gone never holds a
//! request longer than the policy allows, and the caller applies its `failureMode`.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use redis::{
    FromRedisValue, ScriptInvocation,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};

use crate::metrics::Metrics;

/// Where Redis is.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    /// One server (or a primary behind a proxy), e.g. `redis://:password@redis:6379/0`.
    Single(String),
    /// Redis Cluster seed nodes; the client discovers the rest and follows slot moves.
    Cluster(Vec<String>),
}

impl From<&bulwark_api::snapshot::RedisConnection> for RedisTarget {
    fn from(connection: &bulwark_api::snapshot::RedisConnection) -> Self {
        use bulwark_api::snapshot::RedisConnection;
        match connection {
            RedisConnection::Url(url) => Self::Single(url.expose().to_string()),
            RedisConnection::Cluster(nodes) => {
                Self::Cluster(nodes.iter().map(|n| n.expose().to_string()).collect())
            }
        }
    }
}

/// Why a Redis call did not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis is not connected yet")]
    NotConnected,
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A cheap-to-clone handle on the connection.
#[derive(Clone)]
pub struct GlobalStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ArcSwapOption<Connection>,
    timeouts: IntCounter,
    errors: IntCounter,
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection attempt gives up after this long; the background task then retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff between cluster connection attempts, and the reconnect ceiling of a single server.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

impl GlobalStore {
    /// Starts connecting in the background and returns at once. Must run inside a Tokio runtime.
    pub fn connect(target: RedisTarget, metrics: &Metrics) -> anyhow::Result<Self> {
        let store = Self {
            inner: Arc::new(Inner {
                connection: ArcSwapOption::empty(),
                timeouts: metrics
                    .store_errors
                    .with_label_values(&["redis", "timeout"]),
                errors: metrics.store_errors.with_label_values(&["redis", "error"]),
            }),
        };
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_max_delay(RECONNECT_MAX_DELAY)
                    // Retries happen in the background; a request never waits for them.
                    .set_number_of_retries(usize::MAX);
                let manager = ConnectionManager::new_lazy_with_config(client, config)?;
                store
                    .inner
                    .connection
                    .store(Some(Arc::new(Connection::Single(manager))));
            }
            RedisTarget::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .build()?;
                let inner = store.inner.clone();
                tokio::spawn(async move {
                    let mut delay = Duration::from_millis(50);
                    loop {
                        match client.get_async_connection().await {
                            Ok(connection) => {
                                inner
                                    .connection
                                    .store(Some(Arc::new(Connection::Cluster(connection))));
                                tracing::info!("connected to the Redis cluster");
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot reach the Redis cluster yet");
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                            }
                        }
                    }
                });
            }
        }
        Ok(store)
    }

    /// Runs a Lua script (`EVALSHA`, loading it on `NOSCRIPT`), waiting at most `timeout`.
    /// Failures are counted in `bulwark_store_errors_total{store="redis"}`.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let result = match self.inner.connection.load_full() {
            None => Err(StoreError::NotConnected),
            Some(connection) => {
                let call = async {
                    match &*connection {
                        Connection::Single(c) => invocation.invoke_async(&mut c.clone()).await,
                        Connection::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
                    }
                };
                match tokio::time::timeout(timeout, call).await {
                    Ok(reply) => reply.map_err(StoreError::from),
                    Err(_) => Err(StoreError::Timeout(timeout)),
                }
            }
        };
        match &result {
            Err(StoreError::Timeout(_)) => self.inner.timeouts.inc(),
            Err(_) => self.inner.errors.inc(),
            Ok(_) => {}
        }
        result
    }
}
