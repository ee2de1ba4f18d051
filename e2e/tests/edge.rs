//! The sidecar's edge, driven with raw requests against an app that records exactly what it
//! received (`RecordingUpstream`, lenient as a careless app): what the policy matched is what
//! the app got, and what the sidecar refuses never reaches the app (docs/security.md).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

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
    // The admin listener answers /healthz before the inbound one is bound: a refused connect
    // is retried, not a failure.
    eventually(std::time::Duration::from_secs(10), "the policy", || {
        let r = send_raw(
            sidecar.inbound,
            "GET /api/ready HTTP/1.1\r\nHost: app\r\nx-api-key: probe\r\nConnection: close\r\n\r\n",
        )?;
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

/// A request header of exactly `len` bytes, line ends included.
fn header_of(len: usize) -> String {
    let mut h = "GET /api/x HTTP/1.1\r\nHost: app\r\nx-api-key: k\r\nx-pad: ".to_owned();
    let end = "\r\nConnection: close\r\n\r\n";
    h.extend(std::iter::repeat_n('a', len - h.len() - end.len()));
    h + end
}

#[test]
fn headers_past_the_limit_are_answered_431_and_held_headers_use_bounded_memory() {
    let edge = start(&[]);
    // Envoy's default, 60 KiB, is the sidecar's too.
    let r = edge.send(&header_of(60 * 1024));
    assert_eq!(r.status, 200, "a header of exactly the limit passes");
    let r = edge.send(&header_of(60 * 1024 + 1));
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.header("bulwark-reason"), Some("request_header_too_large"));
    assert_eq!(
        edge.app.received().len(),
        1,
        "the refused one never reached the app"
    );

    // 100 clients each holding an unfinished header just under the limit: the sidecar holds
    // at most the limit per connection (before: 900 KB each took it from 56 to 146 MB).
    let before = edge.sidecar.rss_kib();
    let partial = &header_of(60 * 1024)[..59 * 1024];
    let held: Vec<_> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(edge.sidecar.inbound).unwrap();
            c.write_all(partial.as_bytes()).unwrap();
            c
        })
        .collect();
    eventually(Duration::from_secs(5), "100 held connections", || {
        let open = edge
            .sidecar
            .metric_sum("bulwark_downstream_connections{listener=\"inbound\"}");
        (open >= 100.0).then_some(())
    });
    let grown_mib = (edge.sidecar.rss_kib().saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 30,
        "100 held headers grew the sidecar by {grown_mib} MiB"
    );
    // Pushed past the limit, each is answered 431 rather than buffered further.
    for mut c in held {
        let _ = c.write_all(&[b'a'; 4096]);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 431 "),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(
        edge.sidecar.metric_sum(
            "bulwark_downstream_refused_total{listener=\"inbound\",reason=\"request_header_too_large\"}"
        ),
        101.0
    );
}

#[test]
fn a_trickled_header_is_answered_408_but_an_idle_keep_alive_connection_is_not() {
    let edge = start(&["--request-header-timeout-seconds", "1"]);
    let mut idle = TcpStream::connect(edge.sidecar.inbound).unwrap();
    let mut slow = TcpStream::connect(edge.sidecar.inbound).unwrap();
    slow.write_all(b"GET /api/x HTTP/1.1\r\nHost: app\r\n")
        .unwrap();
    // One header line every 200 ms: each read is quick, the header never ends.
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        if slow
            .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            break;
        }
    }
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains("bulwark-reason: request_header_timeout"),
        "{answer}"
    );

    // Silent for 2 s before its first byte: the deadline had not started.
    idle.write_all(header_of(200).as_bytes()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    idle.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        edge.app.received().len(),
        1,
        "only the idle connection's request"
    );
}

#[test]
fn connections_past_the_limit_are_closed_and_slots_come_back() {
    let edge = start(&["--max-connections", "8"]);
    let keep_alive = "GET /api/x HTTP/1.1\r\nHost: app\r\nx-api-key: k\r\n\r\n";
    let mut open: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = TcpStream::connect(edge.sidecar.inbound).unwrap();
            c.write_all(keep_alive.as_bytes()).unwrap();
            let mut buf = [0u8; 12];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"HTTP/1.1 200");
            c
        })
        .collect();
    let mut ninth = TcpStream::connect(edge.sidecar.inbound).unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = ninth.write_all(keep_alive.as_bytes());
    let mut answer = Vec::new();
    let _ = ninth.read_to_end(&mut answer);
    assert!(answer.is_empty(), "closed unanswered: {answer:?}");
    assert_eq!(
        edge.sidecar.metric_sum(
            "bulwark_downstream_refused_total{listener=\"inbound\",reason=\"connection_limit\"}"
        ),
        1.0
    );
    assert_eq!(
        edge.sidecar
            .metric_sum("bulwark_downstream_connections{listener=\"inbound\"}"),
        8.0
    );
    drop(open.pop());
    eventually(Duration::from_secs(5), "a slot given back", || {
        send_raw(edge.sidecar.inbound, &header_of(200)).filter(|r| r.status == 200)
    });
}
