//! Command-line flags. Every flag also reads an environment variable, so the injected container
//! is configured through `env` like any other.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use pingora::server::configuration::ServerConf;

use crate::listener::protocol::AppProtocol;

/// The Bulwark sidecar: enforces Bulwark traffic policy in front of one app.
#[derive(Debug, Parser)]
#[command(name = "bulwark-sidecar", version, about, long_about = None)]
pub struct Args {
    /// Address of the inbound listener: clients connect here and are proxied to `--app`.
    #[arg(long, env = "BULWARK_INBOUND_LISTEN", default_value = "0.0.0.0:15080")]
    pub inbound_listen: SocketAddr,

    /// Address of the app the inbound listener forwards to (normally on localhost).
    #[arg(long, env = "BULWARK_APP", default_value = "127.0.0.1:8080")]
    pub app: SocketAddr,

    /// Address of the outbound listener: the app sends its plain-HTTP calls to other services
    /// here, as to an HTTP proxy (`HTTP_PROXY=http://127.0.0.1:15001`) or with a `Host` header,
    /// and the sidecar forwards them to the destination named. Keep it on loopback: it proxies
    /// to any destination.
    #[arg(
        long,
        env = "BULWARK_OUTBOUND_LISTEN",
        default_value = "127.0.0.1:15001"
    )]
    pub outbound_listen: SocketAddr,

    /// Address of the admin listener (/healthz, /readyz, /metrics). Keep it on loopback: it is
    /// not authenticated.
    #[arg(long, env = "BULWARK_ADMIN_LISTEN", default_value = "127.0.0.1:15090")]
    pub admin_listen: SocketAddr,

    /// Address of flagd's evaluation API (gRPC, `flagd.evaluation.v1` and `v2`): point an
    /// OpenFeature flagd provider in RPC mode here. 8013 is flagd's own port. Keep it on
    /// loopback: the app shares the pod's network.
    #[arg(long, env = "BULWARK_FLAGD_LISTEN", default_value = "127.0.0.1:8013")]
    pub flagd_listen: SocketAddr,

    /// Standalone mode: a directory of Bulwark custom resources (the same YAML as for
    /// Kubernetes), watched and hot-reloaded. An invalid change is rejected and the last good
    /// policy keeps serving.
    #[arg(long, env = "BULWARK_CONFIG_DIR", conflicts_with = "operator_url")]
    pub config_dir: Option<PathBuf>,

    /// How often --config-dir is checked for changes, in milliseconds.
    #[arg(long, env = "BULWARK_CONFIG_POLL_MS", default_value_t = 1000)]
    pub config_poll_ms: u64,

    /// Kubernetes mode: the operator's policy stream, e.g.
    /// `https://bulwark-operator.bulwark-system.svc:9444`. The sidecar is ready once it enforces
    /// a snapshot (from the operator, or the last good one on disk); when the operator is
    /// unreachable it keeps enforcing the last good snapshot and reconnects with backoff.
    #[arg(long, env = "BULWARK_OPERATOR_URL")]
    pub operator_url: Option<String>,

    /// The CA that signed the operator's certificate, as PEM text (the only CA trusted for the
    /// stream). Injection sets it in the environment.
    #[arg(
        long,
        env = "BULWARK_OPERATOR_CA",
        conflicts_with = "operator_ca_file",
        hide_env_values = true
    )]
    pub operator_ca: Option<String>,

    /// The operator's CA as a PEM file, instead of --operator-ca.
    #[arg(long, env = "BULWARK_OPERATOR_CA_FILE")]
    pub operator_ca_file: Option<PathBuf>,

    /// The pod's projected ServiceAccount token (audience `bulwark`), sent as a bearer token to
    /// the operator. Read again on every connect: the kubelet rotates it.
    #[arg(
        long,
        env = "BULWARK_TOKEN_FILE",
        default_value = "/var/run/secrets/bulwark/token"
    )]
    pub token_file: PathBuf,

    /// The name the operator's certificate must carry, if not the host of --operator-url (a DNS
    /// name or an IP address).
    #[arg(long, env = "BULWARK_OPERATOR_SERVER_NAME")]
    pub operator_server_name: Option<String>,

    /// The most local rate-limit counters kept in memory (one per key and rule). When full, an
    /// arbitrary counter is dropped to make room (bulwark_ratelimit_evictions_total).
    #[arg(long, env = "BULWARK_MAX_COUNTERS", default_value_t = 1_000_000)]
    pub max_counters: usize,

    /// Redis for `scope: Global` rate limits and quotas, e.g. `redis://:password@redis:6379/0`
    /// (`rediss://` is not supported yet). Without it, policies with `scope: Global` are
    /// rejected. A URL with a password belongs in BULWARK_REDIS_URL, not on the command line,
    /// where every local user can read it.
    #[arg(long, env = "BULWARK_REDIS_URL", conflicts_with = "redis_cluster")]
    pub redis_url: Option<String>,

    /// Redis Cluster instead of --redis-url: comma-separated seed node URLs.
    #[arg(long, env = "BULWARK_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,

    /// What the app speaks on --app: `auto` (HTTP/1.1, and HTTP/2 with prior knowledge for
    /// gRPC requests, which need it), `http1` or `h2c` (every request over HTTP/2). Unset: what
    /// the snapshot says (the operator's reading of the Service `appProtocol`), else `auto`.
    #[arg(long, env = "BULWARK_APP_PROTOCOL", value_enum)]
    pub app_protocol: Option<AppProtocol>,

    /// Directory for the sidecar's own state: the last good snapshot (so a restarted sidecar
    /// enforces at once), local quota usage (`quota.redb`), the upgrade socket and the pid file.
    #[arg(long, env = "BULWARK_STATE_DIR", default_value = "/var/run/bulwark")]
    pub state_dir: PathBuf,

    /// The most (quota, key) usage entries of local quotas kept for the current periods. When
    /// full, a key not seen yet this period is admitted without being counted
    /// (bulwark_store_errors_total{store="quota",kind="full"}), so filling the store cannot lock
    /// new clients out; ended periods make room again.
    #[arg(long, env = "BULWARK_MAX_QUOTA_KEYS", default_value_t = bulwark_policy::quota::usage::DEFAULT_MAX_KEYS)]
    pub max_quota_keys: usize,

    /// How often local quota usage is written to `--state-dir/quota.redb`, in milliseconds. It
    /// is also written when shutdown starts; a crash (kill -9) loses at most this interval's usage.
    #[arg(long, env = "BULWARK_QUOTA_FLUSH_MS", default_value_t = 1000)]
    pub quota_flush_ms: u64,

    /// The largest `--state-dir/webhooks.redb` may grow, in MiB. When the messages held fill
    /// it (between half and nine-tenths of it, as the file's growth falls), new webhook messages
    /// are refused with 507; the ones held are kept and delivered, and their delivery makes room
    /// again.
    #[arg(long, env = "BULWARK_WEBHOOK_MAX_STORE_MB", default_value_t = 1024)]
    pub webhook_max_store_mb: u64,

    /// Webhook delivery attempts in flight at once, across all endpoints (each endpoint is
    /// also bounded by its `maxConcurrency`).
    #[arg(long, env = "BULWARK_WEBHOOK_MAX_IN_FLIGHT", default_value_t = 256)]
    pub webhook_max_in_flight: usize,

    /// How many proxies in front of this sidecar append the client's address to
    /// `X-Forwarded-For` (an ingress controller, a cloud load balancer): `ClientIP` keys then
    /// use the address that many entries from the right, as Envoy's `xff_num_trusted_hops`.
    /// 0 (the default): the connection's peer address; the header is ignored, since any client
    /// can write it.
    #[arg(long, env = "BULWARK_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,

    /// The zone this pod runs in (`topology.kubernetes.io/zone`): failover upstreams with
    /// `zoneAware` prefer endpoints of this zone. The injector sets it from the pod's label of
    /// that name (which Kubernetes' PodTopologyLabels admission copies from the node); empty or
    /// unset: no zone preference.
    #[arg(long, env = "BULWARK_ZONE")]
    pub zone: Option<String>,

    /// Normalize request paths before policies match them, and forward the normalized path
    /// (RFC 3986: unreserved escapes decoded, dot segments removed), so a rule on `/api` also
    /// covers `/%61pi` and `/x/../api`, as the app would read them (docs/security.md).
    #[arg(long, env = "BULWARK_NORMALIZE_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub normalize_path: bool,

    /// Merge runs of slashes in request paths (`//api` → `/api`) before matching and forwarding.
    #[arg(long, env = "BULWARK_MERGE_SLASHES", default_value_t = true, action = clap::ArgAction::Set)]
    pub merge_slashes: bool,

    /// What to do with `%2F` and `%5C` in request paths: `reject` (400, the default: apps
    /// disagree on whether they separate segments), `keep` (forward them as they are, for apps
    /// with such segments), or `redirect` (307 to the path with them decoded).
    #[arg(long, env = "BULWARK_ESCAPED_SLASHES", default_value = "reject", value_parser = ["keep", "reject", "redirect"])]
    pub escaped_slashes: String,

    /// Open client connections per listener (inbound, outbound); more are closed unread, as by
    /// nginx's `worker_connections` (docs/security.md).
    #[arg(long, env = "BULWARK_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Largest request line plus header fields a client may send, in bytes; past it the sidecar
    /// answers 431 and closes the connection. Envoy's default is 60 KiB too.
    #[arg(long, env = "BULWARK_MAX_REQUEST_HEADER_BYTES", default_value_t = 60 * 1024)]
    pub max_request_header_bytes: usize,

    /// Seconds from a request header's first byte to its end; a slower header is answered 408
    /// and its connection closed, so trickling clients cannot hold connections.
    #[arg(
        long,
        env = "BULWARK_REQUEST_HEADER_TIMEOUT_SECONDS",
        default_value_t = 10.0
    )]
    pub request_header_timeout_seconds: f64,

    /// Worker threads of each listener.
    #[arg(long, env = "BULWARK_THREADS", default_value_t = 1)]
    pub threads: usize,

    /// At most how many seconds in-flight requests may take to finish after SIGTERM (new
    /// connections are closed at once, kept-alive ones after their current request); the
    /// process exits as soon as none is left. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "BULWARK_SHUTDOWN_GRACE_SECONDS", default_value_t = 5)]
    pub shutdown_grace_seconds: u64,

    /// Take over the listening sockets of a running sidecar (zero-downtime upgrade): the old
    /// process hands them over through the upgrade socket in `--state-dir`, then drains.
    #[arg(long)]
    pub upgrade: bool,
}

impl Args {
    /// The limits at the listeners' edge; an error names the flag at fault.
    pub fn edge_limits(&self) -> anyhow::Result<crate::listener::edge::EdgeLimits> {
        let header_timeout =
            std::time::Duration::try_from_secs_f64(self.request_header_timeout_seconds)
                .ok()
                .filter(|t| !t.is_zero())
                .context("--request-header-timeout-seconds must be a positive number of seconds")?;
        anyhow::ensure!(
            self.max_connections > 0,
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(
            self.max_request_header_bytes >= 1024,
            "--max-request-header-bytes must be at least 1024"
        );
        Ok(crate::listener::edge::EdgeLimits {
            max_connections: self.max_connections,
            max_header_bytes: self.max_request_header_bytes,
            header_timeout,
        })
    }

    /// The path normalization the flags ask for.
    pub fn path_normalization(&self) -> bulwark_policy::request::path::PathNormalization {
        use bulwark_policy::request::path::{EscapedSlashes, PathNormalization};
        PathNormalization {
            rfc3986: self.normalize_path,
            merge_slashes: self.merge_slashes,
            escaped_slashes: match self.escaped_slashes.as_str() {
                "keep" => EscapedSlashes::Keep,
                "redirect" => EscapedSlashes::Redirect,
                _ => EscapedSlashes::Reject,
            },
        }
    }

    /// The Redis to use for `Global` scope, if any.
    pub fn redis_target(&self) -> Option<bulwark_policy::redis_client::RedisTarget> {
        bulwark_api::snapshot::RedisConnection::from_flags(
            self.redis_url.as_deref(),
            &self.redis_cluster,
        )
        .map(|connection| (&connection).into())
    }

    /// The operator stream's target and TLS settings, if --operator-url is given. Errors name
    /// the flag at fault.
    pub fn operator_source(
        &self,
    ) -> anyhow::Result<
        Option<(
            crate::config::stream::connect::Target,
            std::sync::Arc<rustls::ClientConfig>,
        )>,
    > {
        use crate::config::stream::{connect::Target, load_ca};
        let Some(url) = &self.operator_url else {
            return Ok(None);
        };
        let target =
            Target::parse(url, self.operator_server_name.as_deref()).map_err(anyhow::Error::msg)?;
        let tls = load_ca(
            self.operator_ca.as_deref(),
            self.operator_ca_file.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Some((target, tls)))
    }

    /// Pingora's server configuration, derived from the flags.
    pub fn server_conf(&self) -> anyhow::Result<ServerConf> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("cannot create --state-dir {}", self.state_dir.display()))?;
        let path = |name: &str| self.state_dir.join(name).to_string_lossy().into_owned();
        Ok(ServerConf {
            threads: self.threads.max(1),
            pid_file: path("sidecar.pid"),
            upgrade_sock: path("upgrade.sock"),
            // SIGTERM drains in crate::shutdown and exits without this sleep; an upgrade's
            // handover (SIGQUIT) still keeps the old process's runtimes serving in-flight
            // requests for the grace period. With 0 here it cancelled them at once.
            grace_period_seconds: Some(self.shutdown_grace_seconds),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        })
    }
}
