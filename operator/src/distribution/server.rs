//! The policy stream's HTTP handler (served over TLS by `tls::serve_tls`).
//!
//! `GET /v1/snapshots/watch`: authenticate, wait until the index has listed everything (a
//! snapshot compiled from a half-listed index could drop policies that exist), then stream the
//! pod's snapshots as JSON lines, skipping the current one if the sidecar already has it
//! (`If-None-Match`), with heartbeats in between. `POST /v1/snapshots/ack`: record what the
//! sidecar applied.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bulwark_api::distribution::{
    ACK_PATH, Ack, HEARTBEAT_SECONDS, STREAM_CONTENT_TYPE, StreamMessage, WATCH_PATH,
};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};

use super::{
    Distributor, Published,
    acks::{AckBook, AckRecord},
    auth::{Authenticator, PodIdentity},
};
use crate::metrics::Metrics;

/// How long a stream waits for the index's first full listing before answering 503.
const SYNC_WAIT: Duration = Duration::from_secs(10);
/// The largest acknowledgement body read (with a sidecar's webhook deliveries: some hundred
/// bytes per endpoint).
const MAX_ACK_BYTES: usize = 256 * 1024;

pub type Body = BoxBody<Bytes, Infallible>;

pub struct StreamServer {
    pub distributor: Arc<Distributor>,
    pub auth: Authenticator,
    pub acks: Arc<AckBook>,
    pub metrics: Arc<Metrics>,
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut line = message.into();
    line.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(line)).boxed())
        .expect("a static response is valid")
}

impl StreamServer {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let route = (req.method().clone(), req.uri().path().to_string());
        let identity = match (&route.0, route.1.as_str()) {
            (&Method::GET, WATCH_PATH) | (&Method::POST, ACK_PATH) => {
                let authorization = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match self.auth.authenticate(authorization).await {
                    Ok(identity) => identity,
                    Err(e) => {
                        let (reason, status) = e.kind();
                        self.metrics
                            .stream_auth_failures
                            .with_label_values(&[reason])
                            .inc();
                        tracing::info!(error = %e, "policy stream request refused");
                        return text(StatusCode::from_u16(status).expect("valid"), e.to_string());
                    }
                }
            }
            _ => return text(StatusCode::NOT_FOUND, "no such endpoint"),
        };
        if route.0 == Method::GET {
            self.watch(identity, req).await
        } else {
            self.ack(identity, req).await
        }
    }

    async fn watch(&self, identity: PodIdentity, req: Request<Incoming>) -> Response<Body> {
        if tokio::time::timeout(SYNC_WAIT, self.distributor.wait_synced())
            .await
            .is_err()
        {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the operator has not finished listing the cluster yet",
            );
        }
        let pod = &identity.pod;
        let Some(mut rx) = self.distributor.subscribe(pod) else {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "pod {}/{} is not an injected pod (label bulwark.dev/injected=true)",
                    pod.namespace, pod.name
                ),
            );
        };
        if rx.borrow().uid != identity.uid {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "pod {}/{} with uid {} no longer exists",
                    pod.namespace, pod.name, identity.uid
                ),
            );
        }
        let have = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_string());
        tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), "policy stream opened");
        let guard = StreamGuard::new(self.metrics.clone());
        let metrics = self.metrics.clone();
        let uid = identity.uid.clone();
        // The first item: the current snapshot unless the sidecar has it.
        let current = rx.borrow_and_update().clone();
        let first = (have.as_deref() != Some(current.etag.as_str())).then_some(current);
        let lines = futures::stream::unfold((rx, first, guard), move |(mut rx, pending, guard)| {
            let metrics = metrics.clone();
            let uid = uid.clone();
            async move {
                if let Some(published) = pending {
                    return Some((message(&published, &metrics), (rx, None, guard)));
                }
                let heartbeat = Duration::from_secs(HEARTBEAT_SECONDS);
                tokio::select! {
                    changed = rx.changed() => {
                        // The pod is gone (or this replica is shutting down): end the stream.
                        changed.ok()?;
                        let published = rx.borrow_and_update().clone();
                        if published.uid != uid {
                            return None;
                        }
                        Some((message(&published, &metrics), (rx, None, guard)))
                    }
                    _ = tokio::time::sleep(heartbeat) => {
                        Some((line(&StreamMessage::Heartbeat), (rx, None, guard)))
                    }
                }
            }
        });
        Response::builder()
            .header(header::CONTENT_TYPE, STREAM_CONTENT_TYPE)
            .header(header::CACHE_CONTROL, "no-store")
            .body(BodyExt::boxed(StreamBody::new(
                lines.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))),
            )))
            .expect("a stream response is valid")
    }

    async fn ack(&self, identity: PodIdentity, req: Request<Incoming>) -> Response<Body> {
        let body = match http_body_util::Limited::new(req.into_body(), MAX_ACK_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                );
            }
        };
        let ack: Ack = match serde_json::from_slice(&body) {
            Ok(ack) => ack,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("not an Ack: {e}")),
        };
        // An acknowledgement of a snapshot this replica did not serve recently still counts as
        // applied, but confirms no policy generation; one that repeats the recorded one (a
        // sidecar re-sending it with new webhook counts) confirms what that one did.
        let sources = match self.distributor.sources_of(&identity.pod, &ack.etag) {
            Some(sources) => sources.as_ref().clone(),
            None => self
                .acks
                .get(&identity.pod)
                .filter(|r| r.uid == identity.uid && r.etag == ack.etag)
                .map(|r| r.sources)
                .unwrap_or_default(),
        };
        let repeated = self.acks.get(&identity.pod).is_some_and(|r| {
            r.uid == identity.uid && r.etag == ack.etag && r.accepted == ack.accepted
        });
        self.metrics
            .acks
            .with_label_values(&[if ack.accepted { "true" } else { "false" }])
            .inc();
        if !ack.accepted && !repeated {
            tracing::warn!(
                pod = %format!("{}/{}", identity.pod.namespace, identity.pod.name),
                error = ack.error.as_deref().unwrap_or(""),
                "a sidecar rejected its snapshot"
            );
        }
        self.acks.record(
            &identity.pod,
            AckRecord {
                uid: identity.uid,
                etag: ack.etag,
                accepted: ack.accepted,
                error: ack.error,
                sources,
                at: now_millis(),
                webhooks: ack.webhooks,
            },
        );
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Full::new(Bytes::new()).boxed())
            .expect("valid")
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn line(message: &StreamMessage) -> Bytes {
    let mut bytes = serde_json::to_vec(message).expect("a message always serialises");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn message(published: &Published, metrics: &Metrics) -> Bytes {
    metrics.snapshots_sent.inc();
    line(&StreamMessage::Snapshot {
        etag: published.etag.clone(),
        snapshot: Box::new(published.snapshot.clone()),
    })
}

/// Counts open streams: +1 when a stream starts, -1 when its body is dropped.
struct StreamGuard(Arc<Metrics>);

impl StreamGuard {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.streams.inc();
        Self(metrics)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.dec();
    }
}
