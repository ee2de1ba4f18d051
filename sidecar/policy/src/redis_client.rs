//! The Redis connection shared by `Global` rate limits and quotas.
//!
//! One multiplexed connection per sidecar (Redis pipelines concurrent requests on it), created
//! lazily and re-established in the background, so a sidecar starts and serves while Redis is
//! down. Every call is bounded by the caller's timeout: Redis being slow or gone never holds a
//! request longer than the policy allows, and the caller applies its `failureMode`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use redis::{
    FromRedisValue, ScriptInvocation,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};

use crate::{lock::lock, metrics::stores::StoreMetrics};

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
pub enum CallError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis is not connected yet")]
    NotConnected,
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A cheap-to-clone handle on the connection.
#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The client, until [`RedisClient::start`] connects it.
    unstarted: Mutex<Option<Client>>,
    connection: ArcSwapOption<Connection>,
    timeouts: IntCounter,
    errors: IntCounter,
    /// False since a call failed, until one succeeds: each change is logged once.
    reachable: AtomicBool,
}

enum Client {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A Redis URL the client library refuses. Never shows the URL: it may hold a password.
#[derive(Debug, thiserror::Error)]
#[error("not a valid Redis URL")]
pub struct InvalidUrl;

/// A connection attempt gives up after this long; the background task then retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff between cluster connection attempts, and the reconnect ceiling of a single server.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

impl RedisClient {
    /// A client for `target`, not connected: no task starts and nothing is dialled until
    /// [`RedisClient::start`], so a client made for a snapshot that is then refused leaves no
    /// trace. Only a malformed URL fails here.
    pub fn new(target: RedisTarget, metrics: &StoreMetrics) -> Result<Self, InvalidUrl> {
        let client = match target {
            RedisTarget::Single(url) => {
                Client::Single(redis::Client::open(url.as_str()).map_err(|_| InvalidUrl)?)
            }
            RedisTarget::Cluster(nodes) => Client::Cluster(Box::new(
                ClusterClientBuilder::new(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .build()
                    .map_err(|_| InvalidUrl)?,
            )),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                unstarted: Mutex::new(Some(client)),
                connection: ArcSwapOption::empty(),
                timeouts: metrics.errors.with_label_values(&["redis", "timeout"]),
                errors: metrics.errors.with_label_values(&["redis", "error"]),
                reachable: AtomicBool::new(true),
            }),
        })
    }

    /// A client for `target`, started: [`RedisClient::new`] then [`RedisClient::start`].
    pub fn connect(target: RedisTarget, metrics: &StoreMetrics) -> Result<Self, InvalidUrl> {
        let client = Self::new(target, metrics)?;
        client.start();
        Ok(client)
    }

    /// Starts connecting in the background and returns at once (idempotent). Must run inside a
    /// Tokio runtime, which then drives the connection's tasks.
    pub fn start(&self) {
        let Some(client) = lock(&self.inner.unstarted).take() else {
            return;
        };
        match client {
            Client::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_max_delay(RECONNECT_MAX_DELAY)
                    // Retries happen in the background; a request never waits for them.
                    .set_number_of_retries(usize::MAX);
                match ConnectionManager::new_lazy_with_config(client, config) {
                    Ok(manager) => self
                        .inner
                        .connection
                        .store(Some(Arc::new(Connection::Single(manager)))),
                    Err(e) => tracing::error!(error = %e, "cannot set up the Redis connection"),
                }
            }
            Client::Cluster(client) => {
                let inner = self.inner.clone();
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
    }

    /// Logs when Redis stops or starts answering (once per change, not per call), with what it
    /// means for requests.
    fn note_reachable(&self, error: Option<&CallError>) {
        let reachable = error.is_none();
        if self.inner.reachable.swap(reachable, Ordering::Relaxed) == reachable {
            return;
        }
        match error {
            Some(error) => tracing::warn!(
                %error,
                "Redis is unreachable: Global rate limits and quotas apply their failureMode \
                 (Open: requests pass uncounted; Closed: they are refused) until it answers"
            ),
            None => tracing::info!("Redis answers again: Global limits and quotas count there"),
        }
    }

    /// True once [`RedisClient::start`] ran.
    pub fn is_started(&self) -> bool {
        lock(&self.inner.unstarted).is_none()
    }

    /// True when `self` and `other` are the same client (clones of one handle).
    pub fn same_as(&self, other: &RedisClient) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs a Lua script (`EVALSHA`, loading it on `NOSCRIPT`), waiting at most `timeout`.
    /// Failures are counted in `bulwark_store_errors_total{store="redis"}`.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let result = match self.inner.connection.load_full() {
            None => Err(CallError::NotConnected),
            Some(connection) => {
                let call = async {
                    match &*connection {
                        Connection::Single(c) => invocation.invoke_async(&mut c.clone()).await,
                        Connection::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
                    }
                };
                match tokio::time::timeout(timeout, call).await {
                    Ok(reply) => reply.map_err(CallError::from),
                    Err(_) => Err(CallError::Timeout(timeout)),
                }
            }
        };
        match &result {
            Err(CallError::Timeout(_)) => self.inner.timeouts.inc(),
            Err(_) => self.inner.errors.inc(),
            Ok(_) => {}
        }
        self.note_reachable(result.as_ref().err());
        result
    }
}
