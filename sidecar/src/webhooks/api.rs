//! The webhook admin API (loopback):
//! - `POST /webhooks/v1/messages`: one message → `202 {"id", "endpoints"}` once it is durable;
//! - `POST /webhooks/v1/messages/batch`: `{"messages": [...]}`, all or none, one fsync;
//! - `GET /webhooks/v1/messages/{id}/attempts`: what each attempt got;
//! - `GET /webhooks/v1/endpoints`: each endpoint's queue, counts, breaker and last failure;
//! - `GET /webhooks/v1/endpoints/{namespace}/{name}/dead-letters?after=&limit=`;
//! - `POST /webhooks/v1/endpoints/{namespace}/{name}/dead-letters/replay` with `{"id": ...}` or
//!   `{"since": "<RFC 3339 time>"}`.
//!
//! Errors are `{"error": ..., "field": ...}` with 400 (not JSON), 413 (too large), 422 (a field
//! is wrong), 404, 503 (the store is not open) or 507 (the store is full).

use std::sync::Arc;

use bulwark_policy::webhooks::{
    message::{self, InvalidMessage, format_id, parse_id},
    outbox::{AcceptError, AcceptedMessage, Outbox},
    store::ReplaySelector,
};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::admin::{Admin, AdminRequest, AdminResponse};

/// The most dead letters one listing returns.
const MAX_LIST: usize = 1000;

pub fn routes(admin: Admin, outbox: Arc<Outbox>) -> Admin {
    let messages = outbox.clone();
    let below_messages = outbox.clone();
    let endpoints = outbox.clone();
    admin
        .route("/webhooks/v1/messages", move |request| {
            let outbox = messages.clone();
            async move {
                if request.method != Method::POST {
                    return method_not_allowed("POST");
                }
                match message::parse_one(&request.body) {
                    Ok(m) => accepted(outbox.accept(vec![m]).await, false),
                    Err(e) => accepted(Err(e.into()), false),
                }
            }
        })
        .route_under("/webhooks/v1/messages/", move |request| {
            let outbox = below_messages.clone();
            async move { below_messages_route(&outbox, request).await }
        })
        .route("/webhooks/v1/endpoints", move |_| {
            let outbox = endpoints.clone();
            async move {
                let report = outbox.report().await;
                AdminResponse::json(StatusCode::OK, &json!({ "endpoints": report }))
            }
        })
        .route_under("/webhooks/v1/endpoints/", move |request| {
            let outbox = outbox.clone();
            async move { endpoint_route(&outbox, request).await }
        })
}

async fn below_messages_route(outbox: &Outbox, request: AdminRequest) -> AdminResponse {
    if request.rest == "batch" {
        if request.method != Method::POST {
            return method_not_allowed("POST");
        }
        return match message::parse_batch(&request.body) {
            Ok(batch) => accepted(outbox.accept(batch).await, true),
            Err(e) => accepted(Err(e.into()), true),
        };
    }
    if let Some(id) = request.rest.strip_suffix("/attempts") {
        let Some(id) = parse_id(id) else {
            return error(StatusCode::NOT_FOUND, "id", "not a message id (msg_...)");
        };
        return match outbox.attempts(id) {
            Ok(attempts) => {
                let attempts: Vec<Value> = attempts
                    .into_iter()
                    .map(|(endpoint, n, record)| {
                        let mut v = serde_json::to_value(record).unwrap_or_default();
                        v["endpoint"] = endpoint.into();
                        v["attempt"] = n.into();
                        v
                    })
                    .collect();
                AdminResponse::json(
                    StatusCode::OK,
                    &json!({ "id": format_id(id), "attempts": attempts }),
                )
            }
            Err(e) => refused(e),
        };
    }
    error(StatusCode::NOT_FOUND, "", "no such webhook route")
}

/// `{namespace}/{name}/dead-letters[/replay]`.
async fn endpoint_route(outbox: &Outbox, request: AdminRequest) -> AdminResponse {
    let parts: Vec<&str> = request.rest.split('/').collect();
    let (endpoint, action) = match parts.as_slice() {
        [ns, name, "dead-letters"] => (format!("{ns}/{name}"), None),
        [ns, name, "dead-letters", "replay"] => (format!("{ns}/{name}"), Some("replay")),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "",
                "expected /webhooks/v1/endpoints/{namespace}/{name}/dead-letters[/replay]",
            );
        }
    };
    match action {
        None => {
            if request.method != Method::GET {
                return method_not_allowed("GET");
            }
            let query = Query(request.query.as_deref().unwrap_or_default());
            let after = match query.get("after") {
                None => None,
                Some(a) => match parse_id(a) {
                    Some(id) => Some(id),
                    None => {
                        return error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "after",
                            "not a message id",
                        );
                    }
                },
            };
            let limit = match query.get("limit").map(str::parse::<usize>) {
                None => 100,
                Some(Ok(n)) if (1..=MAX_LIST).contains(&n) => n,
                Some(_) => {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "limit",
                        &format!("must be 1 to {MAX_LIST}"),
                    );
                }
            };
            match outbox.dead_letters(&endpoint, after, limit).await {
                Ok(letters) => {
                    let next = (letters.len() == limit)
                        .then(|| letters.last().map(|l| format_id(l.id)))
                        .flatten();
                    let letters: Vec<Value> = letters
                        .into_iter()
                        .map(|l| {
                            json!({
                                "id": format_id(l.id),
                                "eventType": l.event_type,
                                "attempts": l.state.attempts,
                                "deadAtUnixMs": l.state.dead_at_ms,
                                "reason": l.state.last_error,
                            })
                        })
                        .collect();
                    AdminResponse::json(
                        StatusCode::OK,
                        &json!({ "endpoint": endpoint, "deadLetters": letters, "next": next }),
                    )
                }
                Err(e) => refused(e),
            }
        }
        Some(_) => {
            if request.method != Method::POST {
                return method_not_allowed("POST");
            }
            let which = match replay_selector(&request.body) {
                Ok(which) => which,
                Err(e) => return invalid(e),
            };
            match outbox.replay(&endpoint, which).await {
                Ok(ids) => AdminResponse::json(
                    StatusCode::ACCEPTED,
                    &json!({ "endpoint": endpoint, "replayed": ids }),
                ),
                Err(e) => refused(e),
            }
        }
    }
}

/// `{"id": "msg_..."}` or `{"since": "2026-12-05T10:00:00Z"}`.
fn replay_selector(body: &[u8]) -> Result<ReplaySelector, InvalidMessage> {
    let invalid = |field: &str, message: &str| InvalidMessage {
        status: 422,
        field: field.to_owned(),
        message: message.to_owned(),
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| InvalidMessage {
        status: 400,
        field: String::new(),
        message: format!("must be a JSON object: {e}"),
    })?;
    match (value.get("id"), value.get("since")) {
        (Some(id), None) => id
            .as_str()
            .and_then(parse_id)
            .map(ReplaySelector::One)
            .ok_or_else(|| invalid("id", "not a message id (msg_...)")),
        (None, Some(since)) => {
            let time: jiff::Timestamp =
                since.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                    invalid(
                        "since",
                        "must be an RFC 3339 time, e.g. 2026-12-05T10:00:00Z",
                    )
                })?;
            Ok(ReplaySelector::Since {
                unix_ms: time.as_millisecond().max(0) as u64,
            })
        }
        _ => Err(invalid("", "give exactly one of id and since")),
    }
}

fn accepted(result: Result<Vec<AcceptedMessage>, AcceptError>, batch: bool) -> AdminResponse {
    match result {
        Ok(mut accepted) if !batch && accepted.len() == 1 => {
            AdminResponse::json(StatusCode::ACCEPTED, &accepted.remove(0))
        }
        Ok(accepted) => AdminResponse::json(StatusCode::ACCEPTED, &json!({ "messages": accepted })),
        Err(e) => refused(e),
    }
}

fn refused(e: AcceptError) -> AdminResponse {
    match e {
        AcceptError::Invalid(e) => invalid(e),
        AcceptError::Full(m) => error(StatusCode::INSUFFICIENT_STORAGE, "", &m),
        AcceptError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, "", &m),
    }
}

fn invalid(e: InvalidMessage) -> AdminResponse {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, &e.field, &e.message)
}

fn error(status: StatusCode, field: &str, message: &str) -> AdminResponse {
    let mut body = json!({ "error": message });
    if !field.is_empty() {
        body["field"] = field.into();
    }
    AdminResponse::json(status, &body)
}

fn method_not_allowed(allowed: &'static str) -> AdminResponse {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "",
        &format!("use {allowed}"),
    )
    .header(http::header::ALLOW, allowed.to_owned())
}

/// `a=1&b=2` (no percent-decoding needed: ids and numbers only).
struct Query<'a>(&'a str);

impl Query<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find_map(|(k, v)| (k == name).then_some(v))
    }
}
