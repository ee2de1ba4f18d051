//! The sidecar's edge, driven with raw requests against an app that records exactly what it
//! received (`RecordingUpstream`, lenient as a careless app): what the policy matched is what
//! the app got, and what the sidecar refuses never reaches the app (docs/security.md).

use std::net::SocketAddr;

use bulwark_e2e::{
    eventually,
    process::{HttpResponse, send_raw},
    sidecar::{RecordingUpstream, Sidecar},
};

const POLICY: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: api
spec:
  rules:
  - name: per-key
    match:
      path: {type: PathPrefix, value: /api}
    key: [{type: Header, name: x-api-key}]
    rates: [{limit: 100, window: 1h}]
";

struct Edge {
    _dir: tempfile::TempDir,
    app: RecordingUpstream,
    sidecar: Sidecar,
}

fn start(extra: &[&str]) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policies");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("policy.yaml"), POLICY).unwrap();
    let app = RecordingUpstream::start(dir.path());
    let mut flags = vec!["--config-dir", config.to_str().unwrap()];
    flags.extend_from_slice(extra);
    let sidecar = Sidecar::start(app.addr, &dir.path().join("state"), &flags);
    eventually(std::time::Duration::from_secs(10), "the policy", || {
        let r = raw(
            sidecar.inbound,
            "GET /api/ready HTTP/1.1\r\nHost: app\r\nx-api-key: probe\r\nConnection: close\r\n\r\n",
        );
        r.header("RateLimit").map(|_| ())
    });
    app.clear();
    Edge {
        _dir: dir,
        app,
        sidecar,
    }
}

fn raw(addr: SocketAddr, request: &str) -> HttpResponse {
    send_raw(addr, request).expect("the sidecar answers")
}

impl Edge {
    fn send(&self, request: &str) -> HttpResponse {
        raw(self.sidecar.inbound, request)
    }
}

#[test]
fn the_app_receives_the_normalized_path_the_policy_matched() {
    let edge = start(&[]);
    let r = edge.send(
        "GET /%61pi/./v1//items/../list?q=%2F HTTP/1.1\r\nHost: app\r\nx-api-key: k\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("RateLimit").is_some(),
        "the /api rule applied: {r:?}"
    );
    let received = edge.app.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].request_line(),
        "GET /api/v1/list?q=%2F HTTP/1.1",
        "path normalized, query untouched"
    );
}

#[test]
fn refused_requests_never_reach_the_app() {
    let edge = start(&[]);
    for (why, request) in [
        (
            "an escaped slash",
            "GET /api%2Fx HTTP/1.1\r\nHost: app\r\nx-api-key: k\r\nConnection: close\r\n\r\n",
        ),
        (
            "a key header twice",
            "GET /api/x HTTP/1.1\r\nHost: app\r\nx-api-key: a\r\nx-api-key: b\r\nConnection: close\r\n\r\n",
        ),
        (
            "a key header with underscores",
            "GET /api/x HTTP/1.1\r\nHost: app\r\nx-api-key: a\r\nx_api_key: b\r\nConnection: close\r\n\r\n",
        ),
        (
            "a lower-case method",
            "post /api/x HTTP/1.1\r\nHost: app\r\nx-api-key: k\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        (
            "no Host in HTTP/1.1",
            "GET /api/x HTTP/1.1\r\nx-api-key: k\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let r = edge.send(request);
        assert_eq!(r.status, 400, "{why}: {r:?}");
        assert_eq!(r.header("bulwark-reason"), Some("bad_request"), "{why}");
    }
    assert_eq!(edge.app.received(), vec![], "nothing reached the app");
}

/// A `Content-Length` list with a second request hidden in the body: a lenient app reading
/// the first number would take the rest as a request of its own. The sidecar refuses the
/// whole exchange, so not one byte of it reaches the app.
#[test]
fn no_bytes_of_one_request_reach_the_app_as_another() {
    let edge = start(&[]);
    let smuggled = "GET /admin HTTP/1.1\r\nHost: app\r\n\r\n";
    let body = format!("hello{smuggled}");
    let r = edge.send(&format!(
        "POST /api/x HTTP/1.1\r\nHost: app\r\nx-api-key: k\r\nContent-Length: 5, {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        edge.app.received(),
        vec![],
        "neither request reached the app"
    );
}

#[test]
fn the_app_sees_the_client_address_the_sidecar_trusted() {
    let edge = start(&[]);
    edge.send(
        "GET /other HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n",
    );
    let received = edge.app.received();
    assert_eq!(
        received[0].header_values("x-forwarded-for"),
        ["127.0.0.1"],
        "the client's claim is dropped"
    );

    let behind = start(&["--trusted-proxy-hops", "1"]);
    behind.send("GET /other HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nConnection: close\r\n\r\n");
    let received = behind.app.received();
    assert_eq!(
        received[0].header_values("x-forwarded-for"),
        ["6.6.6.6, 203.0.113.7, 127.0.0.1"],
        "behind one trusted proxy, the client is second from the right, as ClientIP keys read it"
    );
}
