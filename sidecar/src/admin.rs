//! The admin listener (loopback): a router over the routes each part of the sidecar provides.
//! The sidecar's own: `/healthz` (the process serves), `/readyz` (it enforces a policy, or has
//! none to wait for), `/metrics`, `/config` (the snapshot being enforced, secrets redacted).
//! The features': `/quota` (a key's quota usage: [`bulwark_policy::quota::admin`]), OFREP
//! (`/ofrep/v1/evaluate/flags[/{key}]`: [`bulwark_policy::flags::ofrep`]), `/failover` (the
//! upstreams' live state: [`bulwark_policy::failover::admin`]), the webhook API
//! (`/webhooks/v1/...`: [`crate::webhooks::api`]), each added with [`Admin::route`] or
//! [`Admin::route_under`].

use std::{future::Future, pin::Pin, sync::Arc, time::Instant};

use async_trait::async_trait;
use bulwark_policy::{clock::unix_nanos, failover, flags::ofrep, quota, runtime::Runtime};
use http::{HeaderMap, HeaderName, Method, Response, StatusCode, header};
use pingora::{apps::http_app::ServeHttp, protocols::http::ServerSession};

use crate::metrics::Metrics;

/// What a route sees of a request.
pub struct AdminRequest {
    pub method: Method,
    /// The path after the route's prefix ([`Admin::route_under`]); empty for exact routes.
    pub rest: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// At most [`MAX_BODY`] bytes (larger bodies are answered 413 before any route runs).
    pub body: Vec<u8>,
}

/// A route's answer.
pub struct AdminResponse {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Vec<u8>,
}

/// The largest request body the admin listener reads (an OFREP evaluation context).
pub const MAX_BODY: usize = 1 << 20;

const PLAIN: &str = "text/plain; charset=utf-8";

impl AdminResponse {
    pub fn text(status: StatusCode, text: &str) -> Self {
        Self {
            status,
            content_type: PLAIN,
            headers: Vec::new(),
            body: text.as_bytes().to_vec(),
        }
    }

    pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Self {
        Self::json_bytes(
            status,
            serde_json::to_vec_pretty(value).expect("admin answers serialise"),
        )
    }

    /// JSON already serialised.
    pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
        }
    }

    pub fn header(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

const JSON: &str = "application/json";

type Answer = Pin<Box<dyn Future<Output = AdminResponse> + Send>>;
type Handler = Box<dyn Fn(AdminRequest) -> Answer + Send + Sync>;

/// Where a route serves.
enum RoutePath {
    Exact(&'static str),
    /// Every path below the prefix (which ends with `/`).
    Under(&'static str),
}

/// The admin listener's routes: an exact path wins over a prefix.
#[derive(Default)]
pub struct Admin {
    routes: Vec<(RoutePath, Handler)>,
}

impl Admin {
    /// The sidecar's own routes.
    pub fn new(metrics: Arc<Metrics>, runtime: Arc<Runtime>) -> Self {
        let ready = runtime.clone();
        Self::default()
            .route("/healthz", |_| async {
                AdminResponse::text(StatusCode::OK, "ok\n")
            })
            .route("/readyz", move |_| {
                let ready = ready.is_ready();
                async move {
                    if ready {
                        AdminResponse::text(StatusCode::OK, "ready\n")
                    } else {
                        AdminResponse::text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "waiting for a first valid policy snapshot\n",
                        )
                    }
                }
            })
            .route("/metrics", move |_| {
                let body = metrics.render();
                async move {
                    AdminResponse {
                        status: StatusCode::OK,
                        content_type: prometheus::TEXT_FORMAT,
                        headers: Vec::new(),
                        body,
                    }
                }
            })
            .route("/config", move |_| {
                let snapshot = runtime.policy().snapshot.redacted();
                async move { AdminResponse::json(StatusCode::OK, &snapshot) }
            })
    }

    /// Serves `path` with `handler`.
    pub fn route<F, A>(self, path: &'static str, handler: F) -> Self
    where
        F: Fn(AdminRequest) -> A + Send + Sync + 'static,
        A: Future<Output = AdminResponse> + Send + 'static,
    {
        self.add(RoutePath::Exact(path), handler)
    }

    /// Serves every path under `prefix` (ending with `/`) with `handler`, which finds the rest
    /// of the path in [`AdminRequest::rest`].
    pub fn route_under<F, A>(self, prefix: &'static str, handler: F) -> Self
    where
        F: Fn(AdminRequest) -> A + Send + Sync + 'static,
        A: Future<Output = AdminResponse> + Send + 'static,
    {
        debug_assert!(prefix.ends_with('/'));
        self.add(RoutePath::Under(prefix), handler)
    }

    fn add<F, A>(mut self, path: RoutePath, handler: F) -> Self
    where
        F: Fn(AdminRequest) -> A + Send + Sync + 'static,
        A: Future<Output = AdminResponse> + Send + 'static,
    {
        self.routes
            .push((path, Box::new(move |request| Box::pin(handler(request)))));
        self
    }

    /// OFREP: `POST /ofrep/v1/evaluate/flags` (every flag) and
    /// `POST /ofrep/v1/evaluate/flags/{key}`, over the flags being enforced.
    pub fn with_flags(self, runtime: Arc<Runtime>) -> Self {
        let all = runtime.clone();
        self.route("/ofrep/v1/evaluate/flags", move |request| {
            let started = Instant::now();
            let runtime = all.clone();
            async move {
                if request.method != Method::POST {
                    return post_only();
                }
                let if_none_match = request
                    .headers
                    .get(header::IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok());
                let answer = ofrep::evaluate_all(
                    &runtime.policy().flags,
                    &request.body,
                    if_none_match,
                    unix_seconds(),
                );
                ofrep::observe(&runtime.metrics.flags, "bulk", answer.status, started);
                ofrep_answer(answer)
            }
        })
        .route_under("/ofrep/v1/evaluate/flags/", move |request| {
            let started = Instant::now();
            let runtime = runtime.clone();
            async move {
                if request.method != Method::POST {
                    return post_only();
                }
                let answer = ofrep::evaluate_one(
                    &runtime.policy().flags,
                    &request.rest,
                    &request.body,
                    unix_seconds(),
                );
                ofrep::observe(&runtime.metrics.flags, "single", answer.status, started);
                ofrep_answer(answer)
            }
        })
    }

    /// `/failover`: the failover upstreams' live state.
    pub fn with_failover(self, runtime: Arc<Runtime>) -> Self {
        self.route("/failover", move |_| {
            let body = failover::admin::report(&runtime.policy().failover, unix_nanos());
            async move { AdminResponse::json(StatusCode::OK, &body) }
        })
    }

    /// `/quota`: the quota feature's usage report.
    pub fn with_quota(self, runtime: Arc<Runtime>) -> Self {
        self.route("/quota", move |request| {
            let runtime = runtime.clone();
            async move {
                let (status, body) = quota::admin::report(
                    &runtime.policy().quotas,
                    &runtime.quota_usage,
                    request.query.as_deref(),
                    unix_nanos(),
                )
                .await;
                AdminResponse::json(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &body,
                )
            }
        })
    }

    /// The handler of `path`, and the rest of the path below its prefix.
    fn find<'p>(&self, path: &'p str) -> Option<(&Handler, &'p str)> {
        let exact = self.routes.iter().find_map(|(p, handler)| match p {
            RoutePath::Exact(p) if *p == path => Some((handler, "")),
            _ => None,
        });
        exact.or_else(|| {
            self.routes.iter().find_map(|(p, handler)| match p {
                RoutePath::Under(prefix) => path
                    .strip_prefix(prefix)
                    .filter(|rest| !rest.is_empty())
                    .map(|rest| (handler, rest)),
                RoutePath::Exact(_) => None,
            })
        })
    }

    fn not_found(&self) -> AdminResponse {
        let paths: Vec<String> = self
            .routes
            .iter()
            .map(|(p, _)| match p {
                RoutePath::Exact(p) => (*p).to_owned(),
                RoutePath::Under(prefix) => format!("{prefix}..."),
            })
            .collect();
        AdminResponse::text(
            StatusCode::NOT_FOUND,
            &format!("not found: try {}\n", paths.join(", ")),
        )
    }
}

fn post_only() -> AdminResponse {
    AdminResponse::text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        .header(header::ALLOW, "POST".into())
}

fn ofrep_answer(answer: ofrep::Answer) -> AdminResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let response = AdminResponse::json_bytes(status, answer.body);
    match answer.etag {
        Some(etag) => response.header(header::ETAG, etag),
        None => response,
    }
}

fn unix_seconds() -> i64 {
    i64::try_from(unix_nanos() / 1_000_000_000).unwrap_or(i64::MAX)
}

/// Reads the request body, up to [`MAX_BODY`]; `None` if it is larger (or cannot be read).
async fn read_body(session: &mut ServerSession) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await.ok()? {
        if body.len() + chunk.len() > MAX_BODY {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let header = session.req_header();
        let path = header.uri.path().to_owned();
        let (method, query, headers) = (
            header.method.clone(),
            header.uri.query().map(str::to_owned),
            header.headers.clone(),
        );
        let answer = match self.find(&path) {
            None => self.not_found(),
            Some((handler, rest)) => match read_body(session).await {
                None => AdminResponse::text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request bodies are at most {MAX_BODY} bytes\n"),
                ),
                Some(body) => {
                    handler(AdminRequest {
                        method,
                        rest: rest.to_owned(),
                        query,
                        headers,
                        body,
                    })
                    .await
                }
            },
        };
        let mut response = Response::builder().status(answer.status);
        // A 304 has no body, and its headers describe the representation it stands for.
        if answer.status != StatusCode::NOT_MODIFIED {
            response = response
                .header(header::CONTENT_TYPE, answer.content_type)
                .header(header::CONTENT_LENGTH, answer.body.len());
        }
        for (name, value) in answer.headers {
            response = response.header(name, value);
        }
        response
            .body(answer.body)
            .expect("admin response parts are valid")
    }
}
