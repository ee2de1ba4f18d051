use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::*;

fn sans() -> Vec<String> {
    required_sans(
        "bulwark-operator",
        "bulwark-system",
        &["127.0.0.1".into(), "localhost".into()],
    )
}

const NOW: i64 = 1_800_000_000;

#[test]
fn required_sans_are_the_service_names_then_the_extra_ones() {
    assert_eq!(
        required_sans(
            "op",
            "ns",
            &[
                " 10.0.0.1 ".into(),
                "".into(),
                "OP.ns".into(),
                "x.example".into()
            ]
        ),
        vec![
            "op",
            "op.ns",
            "op.ns.svc",
            "op.ns.svc.cluster.local",
            "10.0.0.1",
            "x.example"
        ]
    );
}

#[test]
fn serving_certificate_carries_every_name_ips_as_ips() {
    let certs = Certificates::generate_at(&sans(), NOW).unwrap();
    let names = certs.serving_sans().unwrap();
    assert_eq!(
        names,
        vec![
            "bulwark-operator",
            "bulwark-operator.bulwark-system",
            "bulwark-operator.bulwark-system.svc",
            "bulwark-operator.bulwark-system.svc.cluster.local",
            "localhost",
            "127.0.0.1",
        ]
    );
    assert_eq!(certs.serving_not_after().unwrap(), NOW + 365 * DAY);
    assert_eq!(certs.renewal(&sans(), NOW), Renewal::Keep);
}

#[test]
fn renewal_when_expiring_within_30_days_or_a_name_is_missing() {
    let certs = Certificates::generate_at(&sans(), NOW).unwrap();
    let expiry = NOW + 365 * DAY;
    assert_eq!(certs.renewal(&sans(), expiry - 31 * DAY), Renewal::Keep);
    assert!(matches!(
        certs.renewal(&sans(), expiry - 29 * DAY),
        Renewal::Serving(why) if why.contains("expires")
    ));
    let mut more = sans();
    more.push("10.1.2.3".into());
    assert!(matches!(
        certs.renewal(&more, NOW),
        Renewal::Serving(why) if why.contains("10.1.2.3")
    ));
    // The CA itself, near its own end (10 years), is replaced whole.
    assert!(matches!(
        certs.renewal(&sans(), NOW + 3650 * DAY - 10 * DAY),
        Renewal::All(_)
    ));
}

#[test]
fn reissue_keeps_the_ca_and_renews_the_serving_certificate() {
    let old = Certificates::generate_at(&sans(), NOW).unwrap();
    let later = NOW + 340 * DAY;
    let mut more = sans();
    more.push("10.1.2.3".into());
    let new = old.reissue_at(&more, later).unwrap();
    assert_eq!(new.ca_pem, old.ca_pem);
    assert_ne!(new.cert_pem, old.cert_pem);
    assert_eq!(new.serving_not_after().unwrap(), later + 365 * DAY);
    assert_eq!(new.renewal(&more, later), Renewal::Keep);
    // Issued by the stored CA: a client trusting only that CA accepts it (checked by webpki).
    verify_with_webpki(&new, "bulwark-operator.bulwark-system.svc", later);
}

#[test]
fn a_serving_certificate_from_another_ca_is_renewed() {
    let a = Certificates::generate_at(&sans(), NOW).unwrap();
    let b = Certificates::generate_at(&sans(), NOW).unwrap();
    let mixed = Certificates {
        cert_pem: b.cert_pem.clone(),
        key_pem: b.key_pem.clone(),
        ..a.clone()
    };
    assert!(matches!(mixed.renewal(&sans(), NOW), Renewal::Serving(_)));
    // The right certificate with another key.
    let wrong_key = Certificates {
        key_pem: b.key_pem.clone(),
        ..a.clone()
    };
    assert!(matches!(
        wrong_key.renewal(&sans(), NOW),
        Renewal::Serving(why) if why.contains("key")
    ));
    let garbage = Certificates {
        ca_pem: "not pem".into(),
        ..a
    };
    assert!(matches!(garbage.renewal(&sans(), NOW), Renewal::All(_)));
}

#[test]
fn secret_data_round_trips() {
    let certs = Certificates::generate(&sans()).unwrap();
    let cfg = TlsConfig {
        namespace: "bulwark-system".into(),
        service_name: "bulwark-operator".into(),
        extra_sans: vec![],
        secret_name: "bulwark-operator-tls".into(),
        webhook_configuration: "x".into(),
        validating_webhook_configuration: "y".into(),
    };
    let secret = new_secret(&cfg, &certs);
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: Vec<_> = secret.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(keys, vec!["ca.crt", "ca.key", "tls.crt", "tls.key"]);
    assert_eq!(Certificates::from_secret(&secret).unwrap(), certs);
    let mut broken = secret.clone();
    broken.data.as_mut().unwrap().remove("ca.key");
    assert!(matches!(
        Certificates::from_secret(&broken),
        Err(TlsError::MissingKey(_, "ca.key"))
    ));
}

#[test]
fn ca_bundle_patch_sets_only_the_webhooks_that_differ_guarded_by_name() {
    let webhook = |name: &str, ca: Option<&str>| MutatingWebhook {
        name: name.into(),
        client_config: WebhookClientConfig {
            ca_bundle: ca.map(|c| ByteString(c.as_bytes().to_vec())),
            ..Default::default()
        },
        ..Default::default()
    };
    let config = MutatingWebhookConfiguration {
        webhooks: Some(vec![
            webhook("a.bulwark.dev", None),
            webhook("b.bulwark.dev", Some("PEM")),
            webhook("c.bulwark.dev", Some("old")),
        ]),
        ..Default::default()
    };
    let patch = serde_json::to_value(ca_bundle_patch(&config, "PEM")).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode("PEM");
    assert_eq!(
        patch,
        serde_json::json!([
            {"op": "test", "path": "/webhooks/0/name", "value": "a.bulwark.dev"},
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": encoded},
            {"op": "test", "path": "/webhooks/2/name", "value": "c.bulwark.dev"},
            {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": encoded},
        ])
    );
    // Applied to the object, every webhook ends with the CA; applying again changes nothing.
    let mut doc = serde_json::to_value(&config).unwrap();
    json_patch::patch(&mut doc, &ca_bundle_patch(&config, "PEM")).unwrap();
    let patched: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
    for w in patched.webhooks.as_ref().unwrap() {
        assert_eq!(w.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
    }
    assert!(ca_bundle_patch(&patched, "PEM").0.is_empty());
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn verify_with_webpki(certs: &Certificates, name: &str, now: i64) {
    use rustls::client::danger::ServerCertVerifier as _;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let cert = CertificateDer::from_pem_slice(certs.cert_pem.as_bytes()).unwrap();
    verifier
        .verify_server_cert(
            &cert,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now as u64)),
        )
        .expect("the CA verifies the serving certificate");
}

async fn start_server(
    resolver: Arc<CertResolver>,
) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        serve_tls(
            listener,
            server_config(resolver),
            |peer: SocketAddr| {
                service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!(
                            "{:?} {} from {}",
                            req.version(),
                            req.uri().path(),
                            peer.ip()
                        );
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                )
            },
            rx,
        )
        .await
        .unwrap();
    });
    (addr, tx, task)
}

async fn h2_get(
    addr: SocketAddr,
    ca_pem: &str,
    name: &str,
) -> Result<(u16, String, Vec<u8>), Box<dyn StdError + Send + Sync>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(client_config(ca_pem, &[b"h2"]));
    let tls = connector
        .connect(ServerName::try_from(name.to_string())?, tcp)
        .await?;
    let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let peer_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{name}/hello")).body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    assert_eq!(alpn, b"h2");
    Ok((status, String::from_utf8(body.to_vec())?, peer_cert))
}

use std::{error::Error as StdError, net::SocketAddr};

use hyper_util::rt::TokioIo;

#[tokio::test]
async fn real_tls_handshake_h2_and_http1_and_hot_swap() {
    let certs = Certificates::generate(&sans()).unwrap();
    let resolver = CertResolver::new(certs.clone()).unwrap();
    let (addr, shutdown, task) = start_server(resolver.clone()).await;

    // HTTP/2 over TLS, trusting only the operator's CA, checking the Service name.
    let (status, body, served) = h2_get(addr, &certs.ca_pem, "bulwark-operator.bulwark-system.svc")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "HTTP/2.0 /hello from 127.0.0.1");
    // The IP name too.
    assert_eq!(
        h2_get(addr, &certs.ca_pem, "127.0.0.1").await.unwrap().0,
        200
    );
    // A name the certificate lacks, or another CA, fails the handshake.
    assert!(h2_get(addr, &certs.ca_pem, "evil.example").await.is_err());
    let other = Certificates::generate(&sans()).unwrap();
    assert!(h2_get(addr, &other.ca_pem, "127.0.0.1").await.is_err());

    // HTTP/1.1 on the same listener.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(client_config(&certs.ca_pem, &[b"http/1.1"]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            http::Request::get("/one")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"HTTP/1.1 /one from 127.0.0.1");

    // Rotation: the next handshake gets the re-issued certificate, still trusted by the CA.
    let renewed = certs.reissue(&sans()).unwrap();
    resolver.set(renewed.clone()).unwrap();
    let (status, _, served_after) = h2_get(addr, &certs.ca_pem, "localhost").await.unwrap();
    assert_eq!(status, 200);
    assert_ne!(served, served_after);
    assert_eq!(
        served_after,
        CertificateDer::from_pem_slice(renewed.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    );
    assert_eq!(**resolver.ca_pem().load(), certs.ca_pem);

    // Graceful stop: the server task returns.
    shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("serve_tls stops on shutdown")
        .unwrap();
}
