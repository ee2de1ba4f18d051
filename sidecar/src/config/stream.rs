//! The operator stream: the sidecar's policy source in Kubernetes.
//!
//! A background service holds one HTTP/2 connection over TLS to the operator
//! (`bulwark_api::distribution` is the contract): it opens [`WATCH_PATH`] with the pod's
//! projected ServiceAccount token (re-read from `--token-file` on every connect: the kubelet
//! rotates it) and the etag of the snapshot it enforces, reads NDJSON [`StreamMessage`]s,
//! compiles and installs each snapshot (persisting it, as the file source does) or keeps the
//! last good one, and acknowledges either way on [`ACK_PATH`] (in order; one that could not be
//! delivered is posted again after the next connect). A stream silent for three
//! heartbeats, an error or an end of stream means reconnecting after a jittered exponential
//! backoff; the last good policy keeps serving meanwhile.
//!
//! Every acknowledgement carries the sidecar's webhook deliveries ([`report`]). After every
//! connect the last acknowledgement is posted again (the replica now serving the stream may not
//! have it: the one before may be gone, its report with it), and while connected it is posted
//! again when the deliveries changed, at most every [`REPORT_SECONDS`] s: counts reach the
//! operator without a new snapshot, and an idle sidecar sends nothing.
//!
//! Modules: [`connect`] (TCP, TLS, HTTP/2), [`lines`] (NDJSON framing), [`backoff`] (delays),
//! [`report`] (webhook deliveries).

pub mod backoff;
pub mod connect;
pub mod lines;
pub mod metrics;
pub mod report;

use bulwark_policy::lock::lock;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bulwark_api::{
    distribution::{
        self, ACK_PATH, Ack, HEARTBEAT_SECONDS, REPORT_SECONDS, STREAM_CONTENT_TYPE, StreamMessage,
        WATCH_PATH, WebhookDeliveries,
    },
    snapshot::{SCHEMA, Snapshot},
};
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use rustls::ClientConfig;
use tokio::time::Instant;

use self::{
    backoff::Backoff,
    connect::{Target, connect},
    lines::LineSplitter,
    report::{DeliveryReporter, SAMPLE_INTERVAL},
};
use super::Installer;

/// A stream that delivers no complete line for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(3 * HEARTBEAT_SECONDS);
/// Timeout of the TCP connect and of the TLS handshake, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of an acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect delays.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The longest stream line accepted (one whole snapshot).
const MAX_LINE_BYTES: usize = 64 << 20;
/// How much of an error body is read and logged.
const MAX_ERROR_BODY: usize = 1024;

/// Reads the CA to trust from `--operator-ca` (PEM text) or `--operator-ca-file` and builds the
/// TLS settings. Errors name the flag.
pub fn load_ca(ca: Option<&str>, ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    match (ca, ca_file) {
        (Some(pem), None) => connect::tls_config(pem.as_bytes(), "--operator-ca"),
        (None, Some(path)) => {
            let flag = format!("--operator-ca-file {}", path.display());
            let pem = std::fs::read(path).map_err(|e| format!("{flag}: {e}"))?;
            connect::tls_config(&pem, &flag)
        }
        (Some(_), Some(_)) => Err("give --operator-ca or --operator-ca-file, not both".into()),
        (None, None) => Err(
            "--operator-url needs the operator's CA: --operator-ca (BULWARK_OPERATOR_CA, PEM text) \
             or --operator-ca-file (BULWARK_OPERATOR_CA_FILE)"
                .into(),
        ),
    }
}

/// The bearer token in `path`, read anew on every call (the kubelet rotates projected tokens).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "--token-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

fn bearer(token: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "--token-file: the token has characters not allowed in a header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct OperatorStream {
    target: Target,
    tls: Arc<ClientConfig>,
    token_file: PathBuf,
    installer: Arc<Installer>,
    /// The etag of the snapshot being enforced, sent as `If-None-Match`.
    etag: Mutex<Option<String>>,
    /// The last acknowledgement, until the operator has taken it.
    unacked: Mutex<Option<Ack>>,
    /// The last acknowledgement posted, posted again with new webhook deliveries.
    last_ack: Mutex<Option<Ack>>,
    /// The webhook deliveries last posted, and when.
    last_report: Mutex<Option<(BTreeMap<String, WebhookDeliveries>, Instant)>>,
    /// Where the webhook deliveries come from (`None`: none are reported).
    reporter: Option<Arc<DeliveryReporter>>,
    /// Deliveries that changed are posted at most this often.
    report_every: Duration,
    backoff: (Duration, Duration),
    dead_after: Duration,
}

/// How one connection ended.
struct Ended {
    /// Whether it delivered at least one line (then the backoff starts over).
    delivered: bool,
    /// Why it ended: `None` when the operator closed the stream cleanly.
    error: Option<StreamError>,
}

/// Why a stream could not be opened or ended. Every kind is retried with backoff while the last
/// good policy keeps serving; [`StreamError::is_refusal`] tells the operator's deliberate
/// refusals (a token or pod problem a retry alone will not fix) from network trouble.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The token file cannot be used (missing, empty, not a header value).
    #[error("{0}")]
    Token(String),
    /// TCP, TLS or HTTP/2 could not be set up.
    #[error("{0}")]
    Connect(String),
    #[error("no answer to {WATCH_PATH} within {0:?}")]
    NoAnswer(Duration),
    #[error("{WATCH_PATH}: {0}")]
    Request(hyper::Error),
    #[error("the operator refused the stream: {status}: {body}{}", refusal_hint(*.status))]
    Refused { status: StatusCode, body: String },
    #[error(
        "no message for {0:?} (heartbeats are due every {HEARTBEAT_SECONDS}s): the stream is dead"
    )]
    Dead(Duration),
    #[error("stream body: {0}")]
    Body(hyper::Error),
    #[error("{0}")]
    Framing(String),
}

impl StreamError {
    /// True when the operator answered and said no.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

/// What a refusal's status most likely means, for the log.
fn refusal_hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => {
            " (the token is missing, expired or not for audience \"bulwark\": check --token-file)"
        }
        StatusCode::FORBIDDEN => " (the token is not bound to a pod)",
        StatusCode::NOT_FOUND => " (the operator does not know this pod, or it is not injected)",
        _ => "",
    }
}

impl OperatorStream {
    /// A stream to `target`. The etag sent at the first connect is that of the snapshot `policy`
    /// enforces now (one loaded from disk, if any), so a restarted sidecar whose snapshot is
    /// current is sent nothing new.
    pub fn new(
        target: Target,
        tls: Arc<ClientConfig>,
        token_file: PathBuf,
        installer: Arc<Installer>,
    ) -> Self {
        let runtime = &installer.runtime;
        let etag = runtime
            .is_ready()
            .then(|| distribution::etag(&runtime.policy().snapshot));
        Self {
            target,
            tls,
            token_file,
            installer,
            etag: Mutex::new(etag),
            unacked: Mutex::new(None),
            last_ack: Mutex::new(None),
            last_report: Mutex::new(None),
            reporter: None,
            report_every: Duration::from_secs(REPORT_SECONDS),
            backoff: (BACKOFF_BASE, BACKOFF_CAP),
            dead_after: DEAD_AFTER,
        }
    }

    /// Reports `reporter`'s webhook deliveries with every acknowledgement, and again when they
    /// change, at most every `every`.
    pub fn with_webhook_report(mut self, reporter: Arc<DeliveryReporter>, every: Duration) -> Self {
        self.reporter = Some(reporter);
        self.report_every = every;
        self
    }

    /// Other reconnect delays and dead-stream timeout (tests).
    pub fn with_timing(mut self, base: Duration, cap: Duration, dead_after: Duration) -> Self {
        self.backoff = (base, cap);
        self.dead_after = dead_after;
        self
    }

    pub fn current_etag(&self) -> Option<String> {
        lock(&self.etag).clone()
    }

    /// One connection, from connecting to its end.
    async fn session(&self) -> Ended {
        let mut delivered = false;
        let error = self.watch(&mut delivered).await.err();
        self.installer.metrics.stream.connected.set(0);
        Ended { delivered, error }
    }

    async fn watch(&self, delivered: &mut bool) -> Result<(), StreamError> {
        let metrics = &self.installer.metrics.stream;
        let fail = |e: StreamError| {
            metrics.connects.with_label_values(&["failure"]).inc();
            e
        };
        let token = read_token(&self.token_file)
            .map_err(StreamError::Token)
            .map_err(fail)?;
        let auth = bearer(&token).map_err(StreamError::Token).map_err(fail)?;
        let conn = connect(&self.target, &self.tls, CONNECT_TIMEOUT)
            .await
            .map_err(StreamError::Connect)
            .map_err(fail)?;
        let mut request = Request::get(self.target.uri(WATCH_PATH))
            .header(header::ACCEPT, STREAM_CONTENT_TYPE)
            .header(header::AUTHORIZATION, auth.clone());
        let etag = self.current_etag();
        if let Some(etag) = &etag {
            request = request.header(header::IF_NONE_MATCH, etag.as_str());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .expect("static request parts are valid");
        let dead_after = self.dead_after;
        let response = tokio::time::timeout(dead_after, conn.send.clone().send_request(request))
            .await
            .map_err(|_| fail(StreamError::NoAnswer(dead_after)))?
            .map_err(|e| fail(StreamError::Request(e)))?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = error_body(response.into_body()).await;
            return Err(fail(StreamError::Refused { status, body }));
        }
        metrics.connects.with_label_values(&["success"]).inc();
        metrics.connected.set(1);
        tracing::info!(operator = %self.target.authority, if_none_match = ?etag, "operator stream connected");

        // The last acknowledgement again (one not delivered, or one this replica may not
        // have), or, for a snapshot enforced since before this process started, its first.
        let again = lock(&self.unacked)
            .clone()
            .or_else(|| lock(&self.last_ack).clone())
            .or_else(|| {
                etag.clone().map(|etag| Ack {
                    etag,
                    accepted: true,
                    error: None,
                    webhooks: None,
                })
            });
        if let Some(mut ack) = again {
            ack.webhooks = self.deliveries().await;
            self.acknowledge(&conn.send, &auth, ack).await;
        }

        let mut body = response.into_body();
        let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
        let mut deadline = Instant::now() + dead_after;
        let mut next_sample = Instant::now() + SAMPLE_INTERVAL;
        loop {
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, body.frame()) => read,
                // Reading a frame is cancel-safe: nothing is lost when the sample comes first.
                _ = tokio::time::sleep_until(next_sample), if self.reporter.is_some() => {
                    next_sample = Instant::now() + SAMPLE_INTERVAL;
                    self.report_if_due(&conn.send, &auth).await;
                    continue;
                }
            };
            let frame = match read {
                Err(_) => return Err(StreamError::Dead(dead_after)),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(StreamError::Body(e)),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for line in splitter
                .push(&data)
                .map_err(|e| StreamError::Framing(e.to_string()))?
            {
                *delivered = true;
                deadline = Instant::now() + dead_after;
                metrics.last_message_timestamp_seconds.set(unix_seconds());
                if let Some(mut ack) = self.handle_line(&line) {
                    ack.webhooks = self.deliveries().await;
                    self.acknowledge(&conn.send, &auth, ack).await;
                }
            }
        }
    }

    /// Applies one stream line; returns the acknowledgement due, if it was a snapshot.
    fn handle_line(&self, line: &[u8]) -> Option<Ack> {
        let (etag, result) = match serde_json::from_slice::<StreamMessage>(line) {
            Ok(StreamMessage::Heartbeat) => {
                tracing::trace!("operator heartbeat");
                return None;
            }
            Ok(StreamMessage::Snapshot { etag, snapshot }) => {
                let result = self.apply(&etag, *snapshot);
                (etag, result)
            }
            Err(e) => {
                // An unknown message type is skipped (a newer operator); a snapshot that does
                // not parse is rejected and acknowledged as such.
                let value: serde_json::Value = match serde_json::from_slice(line) {
                    Ok(value) => value,
                    Err(_) => {
                        tracing::warn!(error = %e, "ignoring a stream line that is not JSON");
                        return None;
                    }
                };
                if value.get("type").and_then(|t| t.as_str()) != Some("snapshot") {
                    tracing::debug!(message = ?value.get("type"), "ignoring an unknown stream message");
                    return None;
                }
                let Some(etag) = value.get("etag").and_then(|t| t.as_str()) else {
                    tracing::warn!(error = %e, "ignoring a snapshot message without an etag");
                    return None;
                };
                let error = format!("the snapshot does not parse: {e}");
                self.count_failure(&error);
                (etag.to_owned(), Err(error))
            }
        };
        Some(Ack {
            etag,
            accepted: result.is_ok(),
            error: result.err(),
            webhooks: None,
        })
    }

    /// The webhook deliveries now, if they are reported.
    async fn deliveries(&self) -> Option<BTreeMap<String, WebhookDeliveries>> {
        match &self.reporter {
            Some(reporter) => Some(reporter.sample().await),
            None => None,
        }
    }

    /// Samples the deliveries; posts the last acknowledgement again with them if they changed
    /// since they were last posted, and that was at least `report_every` ago.
    async fn report_if_due(&self, send: &SendRequest<Full<Bytes>>, auth: &HeaderValue) {
        let Some(deliveries) = self.deliveries().await else {
            return;
        };
        let due = match &*lock(&self.last_report) {
            None => true,
            Some((sent, at)) => *sent != deliveries && at.elapsed() >= self.report_every,
        };
        let last = lock(&self.last_ack).clone();
        if let (true, Some(mut ack)) = (due, last) {
            ack.webhooks = Some(deliveries);
            self.acknowledge(send, auth, ack).await;
        }
    }

    /// Compiles and installs `snapshot`, or keeps the last good policy. The operator's
    /// `version` is kept (it is informational: the etag is what identifies content).
    fn apply(&self, etag: &str, snapshot: Snapshot) -> Result<(), String> {
        let version = snapshot.version;
        if snapshot.schema != SCHEMA {
            let error = format!(
                "snapshot schema {} is not {SCHEMA}, the one this sidecar reads",
                snapshot.schema
            );
            self.count_failure(&error);
            return Err(error);
        }
        match self.installer.compile(snapshot) {
            Ok(compiled) => {
                self.installer.install(compiled);
                *lock(&self.etag) = Some(etag.to_owned());
                tracing::info!(version, etag, "policy snapshot from the operator installed");
                Ok(())
            }
            Err(e) => {
                let error = e.to_string();
                self.count_failure(&error);
                Err(error)
            }
        }
    }

    /// Posts `ack` and waits for the answer (acknowledgements go in order: the operator keeps
    /// the newest it hears). An ack that is not delivered is kept and posted again first thing
    /// after the next connect, since a current etag makes the operator send nothing to answer.
    async fn acknowledge(&self, send: &SendRequest<Full<Bytes>>, auth: &HeaderValue, ack: Ack) {
        *lock(&self.unacked) = Some(ack.clone());
        *lock(&self.last_ack) = Some(ack.clone());
        if let Some(deliveries) = &ack.webhooks {
            *lock(&self.last_report) = Some((deliveries.clone(), Instant::now()));
        }
        let delivered = send_ack(
            send.clone(),
            self.target.uri(ACK_PATH),
            auth.clone(),
            &ack,
            &self.installer.metrics.stream,
        )
        .await;
        let mut unacked = lock(&self.unacked);
        if delivered && unacked.as_ref() == Some(&ack) {
            *unacked = None;
        }
    }

    fn count_failure(&self, error: &str) {
        self.installer
            .reject("policy snapshot from the operator", error);
    }
}

/// The first line of an error response, at most [`MAX_ERROR_BODY`] bytes read.
async fn error_body(mut body: Incoming) -> String {
    let mut bytes = Vec::new();
    let read = async {
        while bytes.len() < MAX_ERROR_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    bytes.truncate(MAX_ERROR_BODY);
    let text = String::from_utf8_lossy(&bytes);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(no reason given)".to_owned()
    } else {
        line.to_owned()
    }
}

/// Posts one acknowledgement; whether the operator took it.
async fn send_ack(
    mut send: SendRequest<Full<Bytes>>,
    uri: http::Uri,
    auth: HeaderValue,
    ack: &Ack,
    metrics: &metrics::StreamMetrics,
) -> bool {
    let accepted = if ack.accepted { "true" } else { "false" };
    let body = serde_json::to_vec(ack).expect("an ack always serialises");
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, auth)
        .body(Full::new(Bytes::from(body)))
        .expect("static request parts are valid");
    let result = tokio::time::timeout(ACK_TIMEOUT, async {
        let response = send
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{status}: {}",
                error_body(response.into_body()).await
            ))
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {ACK_TIMEOUT:?}")));
    let outcome = match &result {
        Ok(()) => {
            tracing::debug!(etag = ack.etag, accepted, "snapshot acknowledged");
            "delivered"
        }
        Err(e) => {
            tracing::warn!(
                etag = ack.etag,
                accepted,
                error = e,
                "cannot acknowledge the snapshot; it is posted again after the next connect"
            );
            "failed"
        }
    };
    metrics.acks.with_label_values(&[accepted, outcome]).inc();
    result.is_ok()
}

#[async_trait]
impl BackgroundService for OperatorStream {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let ended = tokio::select! {
                ended = self.session() => ended,
                _ = shutdown.changed() => {
                    self.installer.metrics.stream.connected.set(0);
                    return;
                }
            };
            if ended.delivered {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            match ended.error {
                None => tracing::info!(
                    retry_in = ?delay,
                    "the operator ended the stream; reconnecting"
                ),
                Some(error) => tracing::warn!(
                    operator = %self.target.authority,
                    %error,
                    refused = error.is_refusal(),
                    retry_in = ?delay,
                    "operator stream down; the last good policy keeps serving"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
