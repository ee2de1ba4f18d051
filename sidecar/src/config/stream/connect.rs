//! One connection to the operator: TCP (with a timeout), TLS trusting only the operator's CA,
//! ALPN `h2`, then an HTTP/2 client handshake. The connection task is aborted when the
//! [`Connection`] is dropped.

use std::{net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_rustls::TlsConnector;

/// Where the operator is and how to verify it.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` as in the URL (what `:authority` carries).
    pub authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl Target {
    /// Parses `--operator-url` (`https://host[:port]`, port 443 by default) and the optional
    /// `--operator-server-name` (the name the certificate must carry; default: the URL's host,
    /// which may be an IP address).
    pub fn parse(url: &str, server_name: Option<&str>) -> Result<Self, String> {
        let bad = |why: &str| format!("--operator-url {url:?}: {why}");
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("give only scheme, host and port (the paths are fixed)"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(443);
        let name = server_name.unwrap_or(&host);
        let server_name = parse_server_name(name).ok_or_else(|| match server_name {
            Some(_) => {
                format!("--operator-server-name {name:?} is not a DNS name or an IP address")
            }
            None => bad("the host is not a DNS name or an IP address"),
        })?;
        Ok(Self {
            authority: authority.as_str().to_owned(),
            host,
            port,
            server_name,
        })
    }

    /// `https://<authority><path>`: HTTP/2 requests carry scheme and authority.
    pub fn uri(&self, path: &str) -> Uri {
        format!("https://{}{path}", self.authority)
            .parse()
            .expect("a parsed authority and a fixed path form a URI")
    }

    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}

fn parse_server_name(name: &str) -> Option<ServerName<'static>> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(ServerName::from(ip));
    }
    ServerName::try_from(name.to_owned()).ok()
}

/// TLS settings trusting only the CA certificates in `pem` (and no system roots), offering
/// only HTTP/2. `flag` names where the PEM came from, for the error message.
pub fn tls_config(pem: &[u8], flag: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let mut count = 0;
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert =
            cert.map_err(|e| format!("{flag}: certificate {} is not valid PEM: {e}", i + 1))?;
        roots
            .add(cert)
            .map_err(|e| format!("{flag}: certificate {} cannot be trusted: {e}", i + 1))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!(
            "{flag}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTP/2 connection: requests go through `send`; the connection task ends with it.
pub struct Connection {
    pub send: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects, with `timeout` for TCP and TLS each.
pub async fn connect(
    target: &Target,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Connection, String> {
    let tcp = tokio::time::timeout(
        timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| format!("TCP connect to {} timed out", target.authority))?
    .map_err(|e| format!("TCP connect to {}: {e}", target.authority))?;
    let _ = tcp.set_nodelay(true);
    let tls_stream = tokio::time::timeout(
        timeout,
        TlsConnector::from(tls.clone()).connect(target.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| format!("TLS handshake with {} timed out", target.authority))?
    .map_err(|e| format!("TLS handshake with {}: {e}", target.authority))?;
    if tls_stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!(
            "{} did not negotiate HTTP/2 (ALPN h2)",
            target.authority
        ));
    }
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls_stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {}: {e}", target.authority))?;
    let authority = target.authority.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(operator = %authority, error = %e, "operator connection closed");
        }
    });
    Ok(Connection { send, task })
}

#[cfg(test)]
mod tests;
