//! Deliveries over HTTP/1.1 (hyper), with TLS (rustls, the system's roots) for `https`
//! endpoints, and the SSRF guard applied where it cannot be bypassed: at connect time, on
//! every address the host resolves to, every time a connection is made (a name that resolves
//! elsewhere later is judged again). Redirects are followed only when the endpoint allows it,
//! each hop checked the same way. Idle connections are kept per (scheme, host, port) for the
//! next delivery to the same receiver.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use async_trait::async_trait;
use bulwark_policy::{
    lock::lock,
    webhooks::{
        Endpoint,
        dispatch::{Sent, Transport},
        retry::{AttemptResult, FailureKind, parse_retry_after},
        ssrf,
    },
};
use bytes::Bytes;
use http::{HeaderMap, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The most redirects followed for one attempt.
const MAX_REDIRECTS: usize = 5;
/// The part of a response body kept in the attempt record.
const EXCERPT_BYTES: usize = 1024;
/// A response body longer than this is not read to its end: the connection is dropped.
const DRAIN_BYTES: usize = 64 * 1024;
/// Idle connections kept per receiver.
const MAX_IDLE: usize = 32;

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    tls: bool,
    host: String,
    port: u16,
    /// Connections made under the guard are not lent to an endpoint without it, and back.
    guarded: bool,
}

#[derive(Default)]
pub struct HttpTransport {
    idle: Mutex<HashMap<PoolKey, Vec<SendRequest<Full<Bytes>>>>>,
}

enum Failure {
    Network(String),
    Refused(String),
}

impl From<Failure> for Sent {
    fn from(failure: Failure) -> Self {
        let (kind, detail) = match failure {
            Failure::Network(d) => (FailureKind::Network, d),
            Failure::Refused(d) => (FailureKind::Refused, d),
        };
        Sent {
            result: AttemptResult::Failed { kind, detail },
            excerpt: None,
        }
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn post(&self, endpoint: &Endpoint, headers: HeaderMap, body: Vec<u8>) -> Sent {
        let body = Bytes::from(body);
        let mut url = endpoint.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let sent = match self.post_once(endpoint, &url, &headers, body.clone()).await {
                Ok(sent) => sent,
                Err(failure) => return failure.into(),
            };
            let (sent, location) = sent;
            match location {
                Some(next) if endpoint.follow_redirects => url = next,
                _ => return sent,
            }
        }
        Failure::Network(format!("more than {MAX_REDIRECTS} redirects")).into()
    }
}

impl HttpTransport {
    /// One request; a redirect's target comes back with the response when there is one.
    async fn post_once(
        &self,
        endpoint: &Endpoint,
        url: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(Sent, Option<Uri>), Failure> {
        let key = pool_key(url, !endpoint.allow_private_addresses)?;
        let mut sender = match self.checkout(&key) {
            Some(sender) => sender,
            None => connect(&key).await?,
        };
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let mut request = Request::post(path)
            .header(header::HOST, authority(&key))
            .body(Full::new(body))
            .map_err(|e| Failure::Refused(format!("cannot build the request: {e}")))?;
        request.headers_mut().extend(headers.clone());
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Network(format!("request to {}: {e}", authority(&key))))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let location = (300..400)
            .contains(&status)
            .then(|| response.headers().get(header::LOCATION))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|l| resolve_location(url, l));
        let (excerpt, drained) = read_excerpt(response.into_body()).await;
        if drained {
            self.checkin(key, sender);
        }
        Ok((
            Sent {
                result: AttemptResult::Response {
                    status,
                    retry_after,
                },
                excerpt,
            },
            location,
        ))
    }

    fn checkout(&self, key: &PoolKey) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(key)?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, key: PoolKey, sender: SendRequest<Full<Bytes>>) {
        let mut idle = lock(&self.idle);
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(sender);
        }
    }
}

fn pool_key(url: &Uri, guarded: bool) -> Result<PoolKey, Failure> {
    let tls = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(Failure::Refused(format!("{url} is not an http(s) URL"))),
    };
    let host = url
        .host()
        .ok_or_else(|| Failure::Refused(format!("{url} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(PoolKey {
        tls,
        host,
        port,
        guarded,
    })
}

fn authority(key: &PoolKey) -> String {
    let host = if key.host.contains(':') {
        format!("[{}]", key.host)
    } else {
        key.host.clone()
    };
    let default = if key.tls { 443 } else { 80 };
    if key.port == default {
        host
    } else {
        format!("{host}:{}", key.port)
    }
}

/// Resolves the host now, refuses guarded addresses, connects to the first allowed address
/// that answers, and speaks TLS for `https`.
async fn connect(key: &PoolKey) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((key.host.as_str(), key.port))
        .await
        .map_err(|e| Failure::Network(format!("cannot resolve {}: {e}", key.host)))?
        .collect();
    let mut refused = Vec::new();
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| match ssrf::forbidden(addr.ip()) {
            Some(why) if key.guarded => {
                refused.push(format!("{} ({why})", addr.ip()));
                false
            }
            _ => true,
        })
        .collect();
    if allowed.is_empty() {
        return Err(if refused.is_empty() {
            Failure::Network(format!("{} resolves to no address", key.host))
        } else {
            Failure::Refused(format!(
                "{} resolves to {}, refused unless network.allowPrivateAddresses is set",
                key.host,
                refused.join(", ")
            ))
        });
    }
    let mut last_error = String::new();
    for addr in allowed {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return if key.tls {
                    let name = ServerName::try_from(key.host.clone()).map_err(|e| {
                        Failure::Refused(format!("TLS server name {}: {e}", key.host))
                    })?;
                    let tls = TlsConnector::from(tls_config())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| Failure::Network(format!("TLS with {}: {e}", key.host)))?;
                    handshake(TokioIo::new(tls)).await
                } else {
                    handshake(TokioIo::new(tcp)).await
                };
            }
            Err(e) => last_error = format!("connect to {addr}: {e}"),
        }
    }
    Err(Failure::Network(last_error))
}

async fn handshake<T>(io: TokioIo<T>) -> Result<SendRequest<Full<Bytes>>, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Network(format!("HTTP handshake: {e}")))?;
    // Ends when the receiver closes the connection or the sender is dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The system's roots (Debian's `ca-certificates`; `SSL_CERT_FILE` or `SSL_CERT_DIR` instead
/// when set), read once.
fn tls_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "a system root certificate could not be read");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, ignored, "webhook TLS roots loaded");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// The first [`EXCERPT_BYTES`] of the body (lossy UTF-8), and whether the body was read to its
/// end (so the connection can carry another request).
async fn read_excerpt(mut body: hyper::body::Incoming) -> (Option<String>, bool) {
    let mut kept = Vec::new();
    let mut total = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return (excerpt(&kept), false),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    total += data.len();
                    let room = EXCERPT_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..room.min(data.len())]);
                    if total > DRAIN_BYTES {
                        return (excerpt(&kept), false);
                    }
                }
            }
        }
    }
    (excerpt(&kept), true)
}

fn excerpt(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// A `Location` against the URL it answered.
fn resolve_location(base: &Uri, location: &str) -> Option<Uri> {
    let uri: Uri = location.parse().ok()?;
    if uri.scheme().is_some() {
        return Some(uri);
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(location.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_location_keeps_the_scheme_and_host() {
        let base: Uri = "https://hooks.example.com:8443/in?x=1".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "/moved").unwrap().to_string(),
            "https://hooks.example.com:8443/moved"
        );
        assert_eq!(
            resolve_location(&base, "http://other.example/")
                .unwrap()
                .to_string(),
            "http://other.example/"
        );
    }

    #[test]
    fn the_host_header_omits_the_default_port() {
        let key = pool_key(&"https://h.example/".parse().unwrap(), true)
            .ok()
            .unwrap();
        assert_eq!(authority(&key), "h.example");
        let key = pool_key(&"http://[::1]:8080/".parse().unwrap(), true)
            .ok()
            .unwrap();
        assert_eq!(authority(&key), "[::1]:8080");
    }
}
