//! Carrying out a failover call in Pingora's phases, for both listeners (outbound calls to a
//! `FailoverPolicy` upstream; inbound requests a flag gate routes to one). Every decision is
//! [`bulwark_policy::failover::call::Call`]'s; this module maps phases to it:
//! `upstream_peer` → [`Tries::peer`] (the backoff, the next endpoint, the try's timeouts),
//! `upstream_response_filter` → [`on_response`] (a retriable status becomes a retry),
//! `fail_to_connect` / `error_while_proxy` → [`on_connect_failure`] / [`on_error`], and
//! `fail_to_proxy` writes [`Tries::take_refusal`]'s answer. The `on_*` functions take the
//! listener's optional call, so a request that is not one gets Pingora's own behaviour.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bulwark_policy::{
    clock::unix_nanos,
    failover::{
        call::{Call, Next},
        endpoint::Address,
        outlier::CallResult,
        upstream::UpstreamTls,
    },
    respond::Reply,
};
use pingora::{
    Error, ErrorSource, ErrorType, Result, RetryType,
    http::ResponseHeader,
    prelude::HttpPeer,
    protocols::tls::CaType,
    proxy::Session,
    utils::tls::{WrappedX509, parse_x509},
};

use super::protocol;

/// The error `Tries::response` raises to retry a response's status (already recorded).
const RETRY_STATUS: ErrorType = ErrorType::Custom("bulwark_retry_status");

/// A failover call in progress.
pub struct Tries {
    call: Call,
    /// Set when the next try waits this long first.
    retry: Option<Duration>,
    /// The sidecar's answer when a retry found nothing to try (for `fail_to_proxy`).
    refusal: Option<Reply>,
    /// The last try's response header is on its way to the client: the call can no longer be
    /// retried (Pingora would send a second response on the same stream).
    answered: bool,
}

impl Tries {
    /// Carries out `call`, within `deadline` (a gRPC call's `grpc-timeout`) when one is given.
    pub fn new(mut call: Call, deadline: Option<Duration>) -> Self {
        if let Some(deadline) = deadline {
            call.limit_to(deadline);
        }
        Self {
            call,
            retry: None,
            refusal: None,
            answered: false,
        }
    }

    /// The peer for the current try (after a retry's backoff and choosing its endpoint), with
    /// the try's timeout on connecting and on each read and write. `resolve` turns a DNS-named
    /// endpoint into an address. On `Err`, [`Tries::take_refusal`] has the answer.
    pub async fn peer<R, F>(&mut self, host: &str, resolve: R) -> Result<HttpPeer>
    where
        R: FnOnce(String, u16) -> F,
        F: Future<Output = std::result::Result<SocketAddr, Reply>>,
    {
        let peer = self.try_peer(host, resolve).await;
        peer.map_err(|reply| {
            self.refusal = Some(reply);
            Error::new(ErrorType::ConnectNoRoute)
        })
    }

    async fn try_peer<R, F>(
        &mut self,
        host: &str,
        resolve: R,
    ) -> std::result::Result<HttpPeer, Reply>
    where
        R: FnOnce(String, u16) -> F,
        F: Future<Output = std::result::Result<SocketAddr, Reply>>,
    {
        if let Some(delay) = self.retry.take() {
            tokio::time::sleep(delay).await;
            self.call.next_try(unix_nanos())?;
        }
        let addr = match &self.call.endpoint().state.address {
            Address::Socket(addr) => *addr,
            Address::Name { host, port } => resolve(host.clone(), *port).await?,
        };
        let tls = self.call.upstream().compiled.tls.as_ref();
        // SNI, and the name the certificate must show: the upstream's `tls.sni`, else the
        // host the app called.
        let sni = tls
            .and_then(|t| t.sni.clone())
            .unwrap_or_else(|| host.to_owned());
        let mut peer = HttpPeer::new(addr, tls.is_some(), sni);
        peer.options.ca = tls.and_then(proxy_ca);
        let timeout = Some(self.call.try_timeout(unix_nanos()));
        peer.options.connection_timeout = timeout;
        peer.options.total_connection_timeout = timeout;
        peer.options.read_timeout = timeout;
        peer.options.write_timeout = timeout;
        Ok(peer)
    }

    /// The answer a failed retry left, if any.
    pub fn take_refusal(&mut self) -> Option<Reply> {
        self.refusal.take()
    }

    /// A try's response header: passed on, or (a retriable status with a retry left) an error
    /// that makes Pingora try again.
    pub fn response(&mut self, session: &Session, response: &ResponseHeader) -> Result<()> {
        let status = response.status.as_u16();
        let result = match protocol::grpc_status(session.req_header(), response) {
            Some(code) => CallResult::Grpc(code),
            None => CallResult::Status(status),
        };
        let next = self.call.finish_try(
            result,
            retry_after(response),
            replayable(session),
            unix_nanos(),
        );
        match next {
            Next::Done => {
                self.answered = true;
                Ok(())
            }
            Next::Retry(delay) => {
                self.retry = Some(delay);
                let mut e = Error::explain(RETRY_STATUS, format!("retrying a {result:?}"));
                e.set_retry(true);
                Err(e)
            }
        }
    }

    /// No connection could be made.
    pub fn connect_failed(&mut self, session: &Session, e: &mut Error) {
        self.finish(session, CallResult::ConnectFailure, e);
    }

    /// The exchange failed after connecting: a reset, a timeout, or a status already handled
    /// by [`Tries::response`].
    pub fn failed(&mut self, session: &Session, e: &mut Error, client_reused: bool) {
        if e.etype() == &RETRY_STATUS {
            return;
        }
        if self.answered {
            // The body broke off after its header went out: the app gets a truncated response
            // (as from any proxy), counted by the listener as an upstream error; the try itself
            // was recorded with its status.
            e.set_retry(false);
            return;
        }
        if e.esource() == &ErrorSource::Downstream || stale_connection(e, client_reused) {
            default_retry(session, e, client_reused);
            return;
        }
        let result = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => CallResult::Timeout,
            _ => CallResult::Reset,
        };
        self.finish(session, result, e);
    }

    fn finish(&mut self, session: &Session, result: CallResult, e: &mut Error) {
        let next = self
            .call
            .finish_try(result, None, replayable(session), unix_nanos());
        match next {
            Next::Retry(delay) => {
                self.retry = Some(delay);
                e.set_retry(true);
            }
            Next::Done => e.set_retry(false),
        }
    }
}

/// `upstream_response_filter` of a listener whose request may be a failover call.
pub fn on_response(
    tries: Option<&mut Tries>,
    session: &Session,
    response: &ResponseHeader,
) -> Result<()> {
    tries.map_or(Ok(()), |tries| tries.response(session, response))
}

/// `fail_to_connect` of a listener whose request may be a failover call.
pub fn on_connect_failure(
    tries: Option<&mut Tries>,
    session: &Session,
    mut e: Box<Error>,
) -> Box<Error> {
    if let Some(tries) = tries {
        tries.connect_failed(session, &mut e);
    }
    e
}

/// `error_while_proxy` of a listener whose request may be a failover call: the call decides,
/// else Pingora's own rule.
pub fn on_error(
    tries: Option<&mut Tries>,
    peer: &HttpPeer,
    session: &Session,
    e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    match tries {
        Some(tries) => tries.failed(session, &mut e, client_reused),
        None => default_retry(session, &mut e, client_reused),
    }
    e
}

/// The upstream's CA bundle as Pingora takes it, made once per compiled upstream.
fn proxy_ca(tls: &UpstreamTls) -> Option<Arc<CaType>> {
    let der = tls.ca.as_ref()?;
    let made = tls.proxy_ca.get_or_init(|| {
        // The policy crate checked that each certificate parses (`parse_x509` panics if not).
        let ca: Arc<CaType> = der
            .iter()
            .map(|d| WrappedX509::new(d.clone(), parse_x509))
            .collect::<Vec<_>>()
            .into();
        Arc::new(ca)
    });
    made.downcast_ref::<Arc<CaType>>().cloned()
}

/// The proxy still holds the whole request body, so a try can be repeated.
fn replayable(session: &Session) -> bool {
    !session.as_ref().retry_buffer_truncated()
}

/// A pooled connection the upstream had closed: the pool's failure, not the endpoint's.
fn stale_connection(e: &Error, client_reused: bool) -> bool {
    matches!(e.retry, RetryType::ReusedOnly) && client_reused
}

/// Pingora's own retry rule, for what is not a failover try's failure (a request to the app, a
/// stale pooled connection, the client's error): an idempotent request whose body is still
/// held is retried when the error allows it on a reused connection.
fn default_retry(session: &Session, e: &mut Error, client_reused: bool) {
    if !session.req_header().method.is_idempotent() || !replayable(session) {
        e.set_retry(false);
    } else {
        e.retry.decide_reuse(client_reused);
    }
}

/// `Retry-After` in seconds (an HTTP date is not honoured: the backoff applies instead).
fn retry_after(response: &ResponseHeader) -> Option<Duration> {
    let value = response
        .headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}
