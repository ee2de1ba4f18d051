//! Limits at the listeners' edge, applied to the bytes before Pingora parses a request: how
//! many connections may be open, and how large and how slow a request header may be.
//!
//! Pingora reads up to 1 MiB of request header, and times out each read but not the whole
//! header (cloudflare/pingora#447), so a client trickling a header could hold a connection and
//! its buffer forever. [`Guarded`] wraps a listener's app: it counts connections and wraps each
//! one's stream in a [`GuardedStream`], which gives Pingora at most `max_header_bytes` bytes
//! while a header is being read and answers 431 when it asks for more, and 408 when the header is not
//! complete `header_timeout` after its first byte (as Envoy's `max_request_headers_kb` and
//! `request_headers_timeout`). The listeners mark where a header ends and the next begins
//! ([`header_received`], [`request_finished`]).
//!
//! **HTTP/2 with prior knowledge** (h2c, what gRPC clients send on a plaintext port) is told
//! from HTTP/1 here too: [`GuardedStream::sniff`] reads a new connection's first bytes (at most
//! the 24 of the preface), under the same timeouts, and replays them. On the preface the stream
//! reports ALPN `h2`, which sends Pingora down its HTTP/2 path, and its reads pass through
//! unbounded: HTTP/2 is bounded by the `h2` crate instead (the decoded header list, streams per
//! connection; [`h2_options`]). Pingora's own h2c switch stays off: its preface peek waits for
//! 24 bytes with no timeout, so a silent connection held its slot for good and an HTTP/1.0
//! request shorter than the preface was never answered (docs/research/http2-grpc.md §2.3).

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use async_trait::async_trait;
use bulwark_policy::{
    metrics::registry::registered,
    respond::{Reason, Reply},
};
use pingora::protocols::http::v2::server::H2Options;

use crate::shutdown::Draining;
use pingora::{
    apps::ServerApp,
    protocols::{
        ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
        Stream, TimingDigest, UniqueID, UniqueIDType,
        raw_connect::ProxyDigest,
        tls::{SslDigest, TlsRef},
    },
    proxy::Session,
    server::ShutdownWatch,
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a new connection may stay silent before its first byte: the bound Pingora's HTTP/1
/// keep-alive gave it before connections were sniffed.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Streams one HTTP/2 connection may have open at once (Pingora's and Envoy's default: 100).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// How HTTP/2 connections are bounded, in place of the header guard: the decoded header list
/// (the `h2` crate answers 431 past it; it counts decoded bytes plus 32 per field, where
/// HTTP/1's limit counts raw bytes) and the streams open at once.
pub fn h2_options(limits: &EdgeLimits) -> H2Options {
    let mut options = H2Options::default();
    options
        .max_header_list_size(limits.max_header_bytes.try_into().unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    options
}

/// The limits, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct EdgeLimits {
    /// Open connections per listener; more are closed at once.
    pub max_connections: usize,
    /// Request line and header fields, as sent, in bytes.
    pub max_header_bytes: usize,
    /// From a header's first byte to its end.
    pub header_timeout: Duration,
}

/// Why a connection or request was refused at the edge (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    ConnectionLimit,
    HeaderTooLarge,
    HeaderTimeout,
}

const REFUSALS: [&str; 3] = [
    "connection_limit",
    "request_header_too_large",
    "request_header_timeout",
];

/// One listener's edge metrics.
pub struct EdgeMetrics {
    open: IntGauge,
    refused: [IntCounter; REFUSALS.len()],
}

impl EdgeMetrics {
    /// The inbound and outbound listeners' edge metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<[Arc<Self>; 2]> {
        let open = registered(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "bulwark_downstream_connections",
                    "Client connections open now, by listener.",
                ),
                &["listener"],
            )?,
        )?;
        let refused = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "bulwark_downstream_refused_total",
                    "Connections closed and requests refused before their header was parsed, by listener and reason (connection_limit, request_header_too_large: 431, request_header_timeout: 408).",
                ),
                &["listener", "reason"],
            )?,
        )?;
        let listener = |name: &str| {
            Arc::new(Self {
                open: open.with_label_values(&[name]),
                refused: REFUSALS.map(|reason| refused.with_label_values(&[name, reason])),
            })
        };
        Ok([listener("inbound"), listener("outbound")])
    }

    fn refused(&self, refusal: Refusal) {
        self.refused[refusal as usize].inc();
    }
}

/// A listener: Pingora's HTTP proxy of `phases`, serving HTTP/1.1 and HTTP/2 with prior
/// knowledge on one port, behind the edge limits.
pub fn http_listener<P>(
    conf: &Arc<pingora::server::configuration::ServerConf>,
    phases: P,
    limits: EdgeLimits,
    metrics: Arc<EdgeMetrics>,
    draining: Draining,
) -> Guarded<pingora::proxy::HttpProxy<P>>
where
    P: pingora::proxy::ProxyHttp,
{
    let mut proxy = pingora::proxy::http_proxy(conf, phases);
    proxy.h2_options = Some(h2_options(&limits));
    let mut server = pingora::apps::HttpServerOptions::default();
    // An idle HTTP/2 connection closes as a kept-alive HTTP/1 one does (PINGs do not count).
    server.h2_idle_timeout = Some(H2_IDLE_TIMEOUT);
    proxy.server_options = Some(server);
    Guarded::new(proxy, limits, metrics, draining)
}

/// How long an HTTP/2 connection with no stream open is kept: Pingora's HTTP/1 keep-alive.
const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A listener's app behind the edge limits.
pub struct Guarded<A> {
    inner: Arc<A>,
    limits: EdgeLimits,
    metrics: Arc<EdgeMetrics>,
    open: AtomicUsize,
    /// Set at SIGTERM ([`crate::shutdown`]) and at an upgrade's handover: new connections are
    /// closed, kept-alive ones end after their current request, HTTP/2 ones get GOAWAY.
    draining: Draining,
}

impl<A> Guarded<A> {
    pub fn new(
        inner: A,
        limits: EdgeLimits,
        metrics: Arc<EdgeMetrics>,
        draining: Draining,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            limits,
            metrics,
            open: AtomicUsize::new(0),
            draining,
        }
    }
}

/// Holds one of the listener's connection slots.
struct Slot<'a, A>(&'a Guarded<A>);

impl<A> Drop for Slot<'_, A> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.open.dec();
    }
}

impl<A> Guarded<A> {
    fn take_slot(&self) -> Option<Slot<'_, A>> {
        let max = self.limits.max_connections;
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.metrics.open.inc();
        Some(Slot(self))
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _pingoras: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.draining.is_draining() {
            // Shutting down: the client reconnects to another replica.
            return None;
        }
        let Some(_slot) = self.take_slot() else {
            // Closed unread, as nginx and Envoy's overload manager do: answering would mean
            // reading the request first, the work the limit is there to avoid.
            self.metrics.refused(Refusal::ConnectionLimit);
            return None;
        };
        // A stream handed back for reuse is already guarded (and sniffed).
        let stream = if (*stream).as_any().is::<GuardedStream>() {
            stream
        } else {
            let mut guarded = GuardedStream::new(
                stream,
                self.limits,
                self.metrics.clone(),
                self.draining.clone(),
            );
            if let Err(e) = guarded.sniff().await {
                tracing::debug!(error = %e, "connection closed before its first request");
                return None;
            }
            Box::new(guarded)
        };
        // Pingora's shutdown watch turns only at an upgrade's handover; the drain's turns at
        // SIGTERM too (and at the handover: AfterHandover). The HTTP/2 loop sends GOAWAY when
        // it turns, so clients open their next streams elsewhere while the ones in flight finish.
        self.inner.process_new(stream, &self.draining.watch()).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Where a connection is in its current request.
const NEXT_HEADER: u8 = 0;
const IN_HEADER: u8 = 1;
const PAST_HEADER: u8 = 2;

/// A client connection whose request headers are bounded in size and time.
pub struct GuardedStream {
    inner: Stream,
    max_header_bytes: usize,
    header_timeout: Duration,
    metrics: Arc<EdgeMetrics>,
    /// [`NEXT_HEADER`], [`IN_HEADER`] or [`PAST_HEADER`]; set by the listener's phases.
    phase: AtomicU8,
    /// Bytes read since the current header began.
    header_read: usize,
    /// When the current header must be complete; set at its first byte.
    deadline: Option<Instant>,
    /// Armed only when a header read has to wait, so a header that arrives at once costs no
    /// timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// The answer being written before the connection is closed.
    refusing: Option<Refusing>,
    draining: Draining,
    /// The bytes [`GuardedStream::sniff`] read, served again before the rest.
    replay: [u8; H2_PREFACE.len()],
    replay_len: usize,
    replayed: usize,
    /// When the first byte came, as sniffed: the first header's deadline counts from it.
    first_byte: Option<Instant>,
    /// The connection began with the HTTP/2 preface.
    h2: bool,
}

struct Refusing {
    refusal: Refusal,
    response: &'static [u8],
    written: usize,
    /// The answer is flushed and the write side closed.
    shut: bool,
    linger_until: Option<Instant>,
}

/// How long a refused connection's further bytes are read and discarded before it is closed.
const LINGER: Duration = Duration::from_millis(500);

impl GuardedStream {
    fn new(
        inner: Stream,
        limits: EdgeLimits,
        metrics: Arc<EdgeMetrics>,
        draining: Draining,
    ) -> Self {
        Self {
            inner,
            max_header_bytes: limits.max_header_bytes,
            header_timeout: limits.header_timeout,
            metrics,
            phase: AtomicU8::new(NEXT_HEADER),
            header_read: 0,
            deadline: None,
            timer: None,
            refusing: None,
            draining,
            replay: [0; H2_PREFACE.len()],
            replay_len: 0,
            replayed: 0,
            first_byte: None,
            h2: false,
        }
    }

    /// Reads the connection's first bytes until they differ from the HTTP/2 preface, or are
    /// all of it, or the client closes; they are replayed to Pingora. The first byte may take
    /// [`FIRST_BYTE_TIMEOUT`], the rest of a preface the header timeout: an incomplete one is
    /// closed then (counted as a header timeout, and unanswered: it is not HTTP/1).
    async fn sniff(&mut self) -> io::Result<()> {
        let mut n = 0;
        let mut deadline = Instant::now() + FIRST_BYTE_TIMEOUT;
        while n < H2_PREFACE.len() {
            let read = tokio::time::timeout_at(deadline, self.inner.read(&mut self.replay[n..]));
            let got = match read.await {
                Ok(got) => got?,
                Err(_) if n == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing sent within {FIRST_BYTE_TIMEOUT:?}"),
                    ));
                }
                Err(_) => {
                    self.metrics.refused(Refusal::HeaderTimeout);
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "an HTTP/2 preface not complete within {:?}",
                            self.header_timeout
                        ),
                    ));
                }
            };
            if got == 0 {
                break;
            }
            if n == 0 {
                let now = Instant::now();
                self.first_byte = Some(now);
                deadline = now + self.header_timeout;
            }
            n += got;
            if self.replay[..n] != H2_PREFACE[..n] {
                break;
            }
        }
        self.replay_len = n;
        // One read may take all 24 bytes of an HTTP/1 request: the bytes decide, not the count.
        self.h2 = self.replay[..n] == H2_PREFACE[..];
        Ok(())
    }

    /// A read of the inner stream, the sniffed bytes first.
    fn poll_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.replayed < self.replay_len {
            let n = buf.remaining().min(self.replay_len - self.replayed);
            buf.put_slice(&self.replay[self.replayed..self.replayed + n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.metrics.refused(refusal);
        self.refusing = Some(Refusing {
            refusal,
            response: canned(refusal),
            written: 0,
            shut: false,
            linger_until: None,
        });
    }

    /// Ready once `deadline` has passed; the connection's one timer, created on first need.
    fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }

    /// Writes the refusal, then fails the read: Pingora closes the connection.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let refusing = self.refusing.as_mut().expect("refusing");
        while refusing.written < refusing.response.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &refusing.response[refusing.written..])
            )?;
            if n == 0 {
                break;
            }
            refusing.written += n;
        }
        if !refusing.shut {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            refusing.shut = true;
        }
        // Closing with unread bytes from the client resets the connection, and the reset can
        // destroy the answer before the client reads it: discard what it still sends until it
        // closes or LINGER has passed, as nginx's lingering close does.
        let until = *refusing
            .linger_until
            .get_or_insert_with(|| Instant::now() + LINGER);
        let mut sink = [0u8; 4096];
        loop {
            let mut discard = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.inner).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                Poll::Ready(_) => break,
                Poll::Pending => {
                    ready!(self.poll_until(until, cx));
                    break;
                }
            }
        }
        let refusing = self.refusing.as_ref().expect("refusing");
        let message = match refusing.refusal {
            Refusal::HeaderTooLarge => format!(
                "request header larger than {} bytes: answered 431",
                self.max_header_bytes
            ),
            Refusal::HeaderTimeout => format!(
                "request header not complete within {:?}: answered 408",
                self.header_timeout
            ),
            Refusal::ConnectionLimit => unreachable!("refused before a stream exists"),
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, message)))
    }

    /// A header read: at most the limit's bytes reach Pingora, so a header within the limit
    /// always completes and one past it never does.
    fn poll_header_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = self.max_header_bytes.saturating_sub(self.header_read);
        if room == 0 {
            // Pingora asks for more: the header did not end within the limit.
            self.refuse(Refusal::HeaderTooLarge);
            return self.poll_refusal(cx);
        }
        let read = if buf.remaining() <= room {
            let before = buf.filled().len();
            let poll = self.poll_inner(cx, buf);
            poll.map_ok(|()| buf.filled().len() - before)
        } else {
            // Only near the limit: read into a buffer of exactly the room left.
            let mut scratch = vec![0; room];
            let mut limited = ReadBuf::new(&mut scratch);
            let poll = self.poll_inner(cx, &mut limited);
            poll.map_ok(|()| {
                buf.put_slice(limited.filled());
                limited.filled().len()
            })
        };
        match read {
            Poll::Ready(Ok(n)) => {
                let now = Instant::now();
                match self.deadline {
                    None if n > 0 => self.deadline = Some(now + self.header_timeout),
                    Some(deadline) if now >= deadline => {
                        self.refuse(Refusal::HeaderTimeout);
                        return self.poll_refusal(cx);
                    }
                    _ => {}
                }
                self.header_read += n;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = self.deadline else {
                    // Between requests: Pingora's keep-alive timeout bounds the wait.
                    return Poll::Pending;
                };
                if self.poll_until(deadline, cx).is_ready() {
                    self.refuse(Refusal::HeaderTimeout);
                    return self.poll_refusal(cx);
                }
                Poll::Pending
            }
        }
    }
}

/// The raw HTTP/1.1 answer for a refusal, built once: the same JSON body and `bulwark-reason`
/// header as every answer of the sidecar, and `Connection: close`.
fn canned(refusal: Refusal) -> &'static [u8] {
    use std::sync::LazyLock;
    static TOO_LARGE: LazyLock<Vec<u8>> =
        LazyLock::new(|| raw_close(&Reply::new(Reason::HeaderTooLarge, None)));
    static TIMEOUT: LazyLock<Vec<u8>> =
        LazyLock::new(|| raw_close(&Reply::new(Reason::HeaderTimeout, None)));
    match refusal {
        Refusal::HeaderTooLarge => &TOO_LARGE,
        Refusal::HeaderTimeout => &TIMEOUT,
        Refusal::ConnectionLimit => b"",
    }
}

fn raw_close(reply: &Reply) -> Vec<u8> {
    let status = http::StatusCode::from_u16(reply.status).expect("a valid status");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.body.len(),
        reply.body
    ));
    out.into_bytes()
}

/// The request's header was parsed: reads are the body's, unbounded here.
pub fn header_received(session: &Session) {
    if let Some(guarded) = guarded(session) {
        guarded.phase.store(PAST_HEADER, Ordering::Relaxed);
    }
}

/// A response is about to be written: while shutting down, it says `Connection: close` and
/// the connection ends after it, so its client reconnects to another replica.
pub fn before_response(session: &mut Session) {
    if guarded(session).is_some_and(|g| g.draining.is_draining()) {
        session.set_keepalive(None);
    }
}

/// The request is done: the next bytes on the connection start the next header.
pub fn request_finished(session: &Session) {
    if let Some(guarded) = guarded(session) {
        guarded.phase.store(NEXT_HEADER, Ordering::Relaxed);
    }
}

fn guarded(session: &Session) -> Option<&GuardedStream> {
    let stream = session.as_downstream().stream()?;
    (**stream).as_any().downcast_ref::<GuardedStream>()
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            return this.poll_refusal(cx);
        }
        if this.h2 {
            // Bounded by the h2 crate (h2_options); the listeners' phases never see this stream.
            return this.poll_inner(cx, buf);
        }
        match this.phase.load(Ordering::Relaxed) {
            PAST_HEADER => this.poll_inner(cx, buf),
            NEXT_HEADER => {
                this.header_read = 0;
                // The first header's clock started at its first byte, which sniff read.
                this.deadline = this.first_byte.take().map(|t| t + this.header_timeout);
                this.phase.store(IN_HEADER, Ordering::Relaxed);
                this.poll_header_read(cx, buf)
            }
            _ => this.poll_header_read(cx, buf),
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// The rest delegates: the peer address, timings and socket options are the inner stream's.

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    /// `h2` for a connection that began with the HTTP/2 preface: Pingora serves it as HTTP/2.
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        if self.h2 {
            return Some(ALPN::H2);
        }
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest)
    }
}

/// Only the sniffed bytes can be peeked (Pingora peeks only with its h2c switch, left off).
#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let unread = &self.replay[self.replayed..self.replay_len];
        if unread.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&unread[..buf.len()]);
        Ok(true)
    }
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .field("header_read", &self.header_read)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use pingora::protocols::{http::v1::server::HttpSession, l4::stream::Stream as L4Stream};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    const MAX: usize = 2048;

    fn metrics() -> Arc<EdgeMetrics> {
        let [inbound, _] = EdgeMetrics::register(&Registry::new()).unwrap();
        inbound
    }

    /// Pingora's own HTTP/1 server session over a guarded loopback connection, and the client.
    async fn connection(timeout: Duration) -> (HttpSession, TcpStream, Arc<EdgeMetrics>) {
        let (stream, client, metrics) = guarded(timeout).await;
        (HttpSession::new(Box::new(stream)), client, metrics)
    }

    /// The guarded server side of a loopback connection (not sniffed), and the client.
    async fn guarded(timeout: Duration) -> (GuardedStream, TcpStream, Arc<EdgeMetrics>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let metrics = metrics();
        let limits = EdgeLimits {
            max_connections: 1,
            max_header_bytes: MAX,
            header_timeout: timeout,
        };
        let stream = GuardedStream::new(
            Box::new(L4Stream::from(server)),
            limits,
            metrics.clone(),
            Draining::default(),
        );
        (stream, client, metrics)
    }

    /// A request header of exactly `len` bytes, line ends included.
    fn header_of(len: usize) -> Vec<u8> {
        let head = "GET / HTTP/1.1\r\nHost: app\r\nx-pad: ";
        let tail = "\r\n\r\n";
        let mut h = head.as_bytes().to_vec();
        h.resize(len - tail.len(), b'a');
        h.extend_from_slice(tail.as_bytes());
        h
    }

    async fn answer(client: &mut TcpStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_header_of_exactly_the_limit_is_parsed_even_with_a_body_in_the_same_read() {
        let (mut session, mut client, metrics) = connection(Duration::from_secs(10)).await;
        let mut bytes = header_of(MAX);
        bytes.extend(std::iter::repeat_n(b'b', 10_000));
        client.write_all(&bytes).await.unwrap();
        assert!(session.read_request().await.unwrap().is_some());
        assert_eq!(session.req_header().headers["x-pad"].len(), MAX - 38);
        assert_eq!(metrics.refused[Refusal::HeaderTooLarge as usize].get(), 0);
    }

    #[tokio::test]
    async fn one_byte_past_the_limit_is_answered_431_and_the_read_fails() {
        let (mut session, mut client, metrics) = connection(Duration::from_secs(10)).await;
        client.write_all(&header_of(MAX + 1)).await.unwrap();
        let err = session.read_request().await.unwrap_err();
        assert!(err.to_string().contains("larger than 2048 bytes"), "{err}");
        drop(session);
        let answer = answer(&mut client).await;
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("bulwark-reason: request_header_too_large\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert_eq!(metrics.refused[Refusal::HeaderTooLarge as usize].get(), 1);
    }

    #[tokio::test]
    async fn a_header_trickled_past_the_deadline_is_answered_408() {
        let (mut session, mut client, metrics) = connection(Duration::from_millis(300)).await;
        let trickle = tokio::spawn(async move {
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if client.write_all(b"x-slow: 1\r\n").await.is_err() {
                    break;
                }
            }
            answer(&mut client).await
        });
        let err = session.read_request().await.unwrap_err();
        assert!(err.to_string().contains("not complete within"), "{err}");
        drop(session);
        let answer = trickle.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(
            answer.contains("bulwark-reason: request_header_timeout\r\n"),
            "{answer}"
        );
        assert_eq!(metrics.refused[Refusal::HeaderTimeout as usize].get(), 1);
    }

    #[tokio::test]
    async fn an_idle_wait_before_the_first_byte_does_not_count() {
        let (mut session, mut client, _) = connection(Duration::from_millis(200)).await;
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            client.write_all(&header_of(100)).await.unwrap();
            client
        });
        assert!(session.read_request().await.unwrap().is_some());
        drop(late.await.unwrap());
    }

    /// A guarded connection whose client sent `first`, sniffed.
    async fn sniffed(
        first: &[u8],
        timeout: Duration,
    ) -> (io::Result<GuardedStream>, TcpStream, Arc<EdgeMetrics>) {
        let (mut stream, mut client, metrics) = guarded(timeout).await;
        client.write_all(first).await.unwrap();
        let sniff = stream.sniff().await.map(|()| stream);
        (sniff, client, metrics)
    }

    #[tokio::test]
    async fn the_http2_preface_makes_an_h2_stream_that_replays_it() {
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        let (stream, _client, _) = sniffed(&bytes, Duration::from_secs(1)).await;
        let mut stream = stream.unwrap();
        assert_eq!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let mut read = vec![0; bytes.len()];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(read, bytes, "the preface, then what followed");
    }

    #[tokio::test]
    async fn an_http1_request_as_long_as_the_preface_stays_http1() {
        // 24 bytes in one read: the bytes decide, not their count.
        let request = b"GET /hello.txt HTTP/1.1\r\nHost: a\r\n\r\n";
        let (stream, _client, _) = sniffed(request, Duration::from_secs(1)).await;
        let stream = stream.unwrap();
        assert_eq!(stream.selected_alpn_proto(), None);
        let mut session = HttpSession::new(Box::new(stream));
        assert!(session.read_request().await.unwrap().is_some());
        assert_eq!(session.req_header().uri.path(), "/hello.txt");
    }

    #[tokio::test]
    async fn an_incomplete_preface_is_closed_after_the_header_timeout() {
        let (stream, _client, metrics) =
            sniffed(b"PRI * HTTP/2.0", Duration::from_millis(200)).await;
        let err = stream.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(metrics.refused[Refusal::HeaderTimeout as usize].get(), 1);
    }

    #[test]
    fn connection_slots_are_bounded_and_given_back() {
        let guarded = Guarded::new(
            (),
            EdgeLimits {
                max_connections: 2,
                max_header_bytes: MAX,
                header_timeout: Duration::from_secs(1),
            },
            metrics(),
            Draining::default(),
        );
        let a = guarded.take_slot().expect("first");
        let _b = guarded.take_slot().expect("second");
        assert!(guarded.take_slot().is_none(), "over the limit");
        assert_eq!(guarded.metrics.open.get(), 2);
        drop(a);
        assert!(guarded.take_slot().is_some(), "a slot was given back");
    }
}
