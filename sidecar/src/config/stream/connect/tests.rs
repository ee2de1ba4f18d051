use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};

use super::*;
use crate::config::stream::testing::{full, pki, serve};

fn ok_handler() -> crate::config::stream::testing::Handler {
    Arc::new(|req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let body = format!("{} {}", req.method(), req.uri().path());
            Response::new(full(body))
        })
    })
}

async fn get(conn: &mut Connection, target: &Target) -> String {
    let request = Request::get(target.uri("/v1/snapshots/watch"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = conn.send.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[test]
fn parses_urls_and_server_names() {
    let t = Target::parse("https://bulwark-operator.bulwark-system.svc:9444", None).unwrap();
    assert_eq!(t.authority, "bulwark-operator.bulwark-system.svc:9444");
    assert_eq!(
        t.uri("/v1/snapshots/ack").to_string(),
        "https://bulwark-operator.bulwark-system.svc:9444/v1/snapshots/ack"
    );
    assert!(matches!(t.server_name(), ServerName::DnsName(_)));
    let t = Target::parse("https://127.0.0.1:9444/", None).unwrap();
    assert!(matches!(t.server_name(), ServerName::IpAddress(_)));
    let t = Target::parse("https://[::1]:9444", None).unwrap();
    assert!(matches!(t.server_name(), ServerName::IpAddress(_)));
    assert_eq!(t.port, 9444);
    let t = Target::parse("https://10.0.0.1", Some("op.example")).unwrap();
    assert_eq!(t.port, 443);
    assert!(matches!(t.server_name(), ServerName::DnsName(_)));

    for (url, name, expected) in [
        (
            "http://op:9444",
            None,
            "--operator-url \"http://op:9444\": the scheme must be https",
        ),
        ("https://op:9444/v1", None, "paths are fixed"),
        ("op:9444", None, "--operator-url"),
        (
            "https://op:9444",
            Some("bad name!"),
            "--operator-server-name \"bad name!\"",
        ),
    ] {
        let e = Target::parse(url, name).unwrap_err();
        assert!(e.contains(expected), "{url}: {e}");
    }
}

#[test]
fn ca_errors_name_the_flag() {
    let e = tls_config(b"hello", "--operator-ca").unwrap_err();
    assert!(
        e.starts_with("--operator-ca: no PEM certificate found"),
        "{e}"
    );
    let e = tls_config(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
        "--operator-ca-file /x.pem",
    )
    .unwrap_err();
    assert!(
        e.starts_with("--operator-ca-file /x.pem: certificate 1"),
        "{e}"
    );
    let e = tls_config(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "--operator-ca",
    )
    .unwrap_err();
    assert!(
        e.starts_with("--operator-ca: certificate 1 cannot be trusted"),
        "{e}"
    );
    assert!(tls_config(pki(&["localhost"]).ca_pem.as_bytes(), "--operator-ca").is_ok());
}

#[tokio::test]
async fn connects_over_h2_to_an_ip_address_with_only_the_given_ca() {
    let pki = pki(&["127.0.0.1"]);
    let (addr, _server) = serve(&pki, &[b"h2"], ok_handler()).await;
    let tls = tls_config(pki.ca_pem.as_bytes(), "--operator-ca").unwrap();
    let target = Target::parse(&format!("https://{addr}"), None).unwrap();
    let mut conn = connect(&target, &tls, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(get(&mut conn, &target).await, "GET /v1/snapshots/watch");

    // Another CA is not trusted.
    let other = pki_other();
    let tls = tls_config(other.as_bytes(), "--operator-ca").unwrap();
    let e = connect(&target, &tls, Duration::from_secs(5))
        .await
        .err()
        .unwrap();
    assert!(e.contains("TLS handshake"), "{e}");
}

fn pki_other() -> String {
    pki(&["127.0.0.1"]).ca_pem
}

#[tokio::test]
async fn the_server_name_override_is_checked_against_the_certificate() {
    let pki = pki(&["bulwark-operator.bulwark-system.svc"]);
    let (addr, _server) = serve(&pki, &[b"h2"], ok_handler()).await;
    let tls = tls_config(pki.ca_pem.as_bytes(), "--operator-ca").unwrap();
    let url = format!("https://{addr}");
    let plain = Target::parse(&url, None).unwrap();
    let e = connect(&plain, &tls, Duration::from_secs(5))
        .await
        .err()
        .unwrap();
    assert!(e.contains("TLS handshake"), "{e}");
    let named = Target::parse(&url, Some("bulwark-operator.bulwark-system.svc")).unwrap();
    let mut conn = connect(&named, &tls, Duration::from_secs(5)).await.unwrap();
    assert_eq!(get(&mut conn, &named).await, "GET /v1/snapshots/watch");
}

#[tokio::test]
async fn a_server_without_h2_is_refused_and_a_closed_port_fails_fast() {
    let pki = pki(&["127.0.0.1"]);
    let (addr, server) = serve(&pki, &[], ok_handler()).await;
    let tls = tls_config(pki.ca_pem.as_bytes(), "--operator-ca").unwrap();
    let target = Target::parse(&format!("https://{addr}"), None).unwrap();
    let e = connect(&target, &tls, Duration::from_secs(5))
        .await
        .err()
        .unwrap();
    assert!(e.contains("did not negotiate HTTP/2"), "{e}");
    server.abort();
    let _ = server.await;
    let e = connect(&target, &tls, Duration::from_secs(5))
        .await
        .err()
        .unwrap();
    assert!(e.contains("TCP connect"), "{e}");
}
