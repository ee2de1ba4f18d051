//! The sidecar binary in front of a real upstream HTTP server on loopback, driven over TCP.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bulwark_e2e::{
    process::{Running, http_get, send_raw, wait_for_status},
    sidecar::{Sidecar, Upstream},
};

#[test]
fn proxies_to_the_app_and_reports_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from the app\n").unwrap();
    let app = Upstream::start(&www, "hello.txt");
    let mut sidecar = Sidecar::start(app.addr, &dir.path().join("state"), &[]);

    // No policy source configured: pass-through is the intended state, so it is ready at once.
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));

    let proxied = http_get(sidecar.inbound, "/hello.txt").expect("the inbound listener answers");
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.body, "hello from the app\n");
    let missing = http_get(sidecar.inbound, "/missing").unwrap();
    assert_eq!(missing.status, 404, "the app's own answers pass through");

    let metrics = http_get(sidecar.admin, "/metrics").unwrap().body;
    assert!(
        metrics.contains("bulwark_inbound_requests_total{grpc_status=\"\",protocol=\"http1\",status_class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulwark_inbound_requests_total{grpc_status=\"\",protocol=\"http1\",status_class=\"4xx\"} 1"),
        "{metrics}"
    );

    let status = sidecar.process.terminate(Duration::from_secs(15));
    assert!(status.success(), "sidecar exited with {status} on SIGTERM");
}

/// An app that answers `/work` after a second, so requests are in flight when the sidecar is
/// told to stop, and anything else at once.
const SLOW_APP: &str = r#"
import http.server, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        slow = self.path.startswith("/work")
        if slow:
            time.sleep(1.0)
        body = b"slow ok\n" if slow else b"fast ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    # socketserver's default backlog of 5 dropped connects when the machine was busy.
    request_queue_size = 128
Server(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
"#;

/// Starts [`SLOW_APP`] on a free port; its log goes to `dir`.
fn slow_app(dir: &Path) -> (Running, SocketAddr) {
    let [port] = bulwark_e2e::free_ports();
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", SLOW_APP, &port.to_string()]);
    let process = Running::spawn("slow app", cmd, &dir.join("app.log"));
    let app = SocketAddr::from(([127, 0, 0, 1], port));
    bulwark_e2e::eventually(Duration::from_secs(10), "the slow app to listen", || {
        std::net::TcpStream::connect(app).ok()
    });
    (process, app)
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, app) = slow_app(dir.path());
    let mut sidecar = Sidecar::start(
        app,
        &dir.path().join("state"),
        &["--shutdown-grace-seconds", "3"],
    );
    let inbound = sidecar.inbound;

    // Eight requests in flight (each takes a second at the app), then SIGTERM.
    let in_flight: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || http_get(inbound, "/work")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A request made during the grace period, after SIGTERM.
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        http_get(inbound, "/work")
    });
    let status = sidecar.process.terminate(Duration::from_secs(15));
    assert!(status.success(), "sidecar exited with {status} on SIGTERM");

    for (i, request) in in_flight.into_iter().enumerate() {
        let response = request.join().unwrap();
        let response = response.unwrap_or_else(|| panic!("request {i} was dropped"));
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, "slow ok\n"),
            "request {i}"
        );
    }
    assert!(
        late.join().unwrap().is_none(),
        "no new request is served once stopping"
    );
}

/// SIGTERM exits as soon as nothing is in flight, not after the whole grace period (Pingora
/// alone sleeps all of it: 20 s here). A kept-alive connection with a request in flight gets
/// its answer with `Connection: close`, so its client reconnects elsewhere.
#[test]
fn sigterm_exits_once_nothing_is_in_flight() {
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let (_app, app) = slow_app(dir.path());
    let mut sidecar = Sidecar::start(
        app,
        &dir.path().join("state"),
        &["--shutdown-grace-seconds", "20"],
    );
    let mut idle = std::net::TcpStream::connect(sidecar.inbound).unwrap();
    idle.write_all(b"GET /fast HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(
        &first, b"HTTP/1.1 200",
        "an idle kept-alive connection stays open"
    );

    let mut busy = std::net::TcpStream::connect(sidecar.inbound).unwrap();
    busy.write_all(b"GET /work HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = sidecar.process.terminate(Duration::from_secs(30));
    let took = started.elapsed();
    assert!(status.success(), "sidecar exited with {status} on SIGTERM");
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with a 20 s grace period"
    );
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = busy.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.ends_with("slow ok\n"), "{answer}");
}

/// Pingora's zero-downtime upgrade: a new sidecar started with `--upgrade` on the same addresses
/// and state directory takes the listening sockets over when the running one gets SIGQUIT; the
/// old one finishes what it was serving and exits. A client connecting back to back through
/// the handover is never refused, and no request is dropped.
#[test]
fn upgrade_hands_the_listeners_over_without_dropping_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, app) = slow_app(dir.path());
    let state = dir.path().join("state");
    let grace = ["--shutdown-grace-seconds", "3"];
    let mut old = Sidecar::start(app, &state, &grace);
    let (inbound, admin) = (old.inbound, old.admin);
    let listeners = old.listeners();

    let in_flight: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || http_get(inbound, "/work")))
        .collect();
    // A new connection per request, back to back, for as long as the handover takes.
    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut served, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match http_get(inbound, "/fast") {
                    Some(r) if (r.status, r.body.as_str()) == (200, "fast ok\n") => served += 1,
                    other => failed.push(other.map(|r| r.status)),
                }
            }
            (served, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let mut new = Sidecar::spawn(app, &state, listeners, &["--upgrade", grace[0], grace[1]]);
    // The new process waits for the sockets on the upgrade socket in the state directory.
    bulwark_e2e::eventually(Duration::from_secs(10), "the upgrade socket", || {
        state.join("upgrade.sock").exists().then_some(())
    });
    let status = old.process.signal_and_wait("QUIT", Duration::from_secs(20));
    assert!(status.success(), "the old sidecar exited with {status}");
    for (i, request) in in_flight.into_iter().enumerate() {
        let response = request.join().unwrap();
        let response = response.unwrap_or_else(|| {
            panic!(
                "in-flight request {i} was dropped\n--- old sidecar:\n{}\n--- new sidecar:\n{}",
                old.log_text(),
                new.log_text()
            )
        });
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, "slow ok\n")
        );
    }

    // Only the new process is left: whatever answers now is the new one.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (served, failed) = steady.join().unwrap();
    assert!(
        failed.is_empty(),
        "requests failed during the handover: {failed:?}\n--- old sidecar:\n{}\n--- new sidecar:\n{}",
        old.log_text(),
        new.log_text()
    );
    assert!(served > 0);
    assert_eq!(http_get(inbound, "/fast").map(|r| r.status), Some(200));
    // The new process counted what it served since it took over.
    let metrics = http_get(admin, "/metrics")
        .expect("the new admin listener answers")
        .body;
    let served_by_new: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bulwark_inbound_requests_total{grpc_status=\"\",protocol=\"http1\",status_class=\"2xx\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no 2xx count in {metrics}"));
    assert!(served_by_new >= 1.0, "{metrics}");
    let status = new.process.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "the new sidecar exited with {status} on SIGTERM"
    );
}

/// One request written as given (no `Host` added): its status and body.
fn raw_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let response = send_raw(addr, request).expect("the outbound listener answers");
    (response.status, response.body)
}

/// Asserts the sidecar answered `request` itself with `status` and `reason`, in the header and
/// in the JSON body.
fn assert_sidecar_answer(addr: SocketAddr, request: &str, status: u16, reason: &str) {
    let response = send_raw(addr, request).expect("the sidecar answers");
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("bulwark-reason"),
        Some(reason),
        "{response:?}"
    );
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["reason"], reason, "{}", response.body);
}

/// The outbound listener: the app's call to another service reaches it whether the app uses
/// the sidecar as an HTTP proxy (absolute URI) or names the service in `Host`; what cannot be
/// proxied gets a clear status, and every call is counted.
#[test]
fn outbound_listener_forwards_the_apps_calls_to_the_service_named() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("svc.txt"), "from the other service\n").unwrap();
    let service = Upstream::start(&www, "svc.txt");
    let sidecar = Sidecar::start(service.addr, &dir.path().join("state"), &[]);
    let (outbound, target) = (sidecar.outbound, service.addr);

    let as_proxy = raw_request(
        outbound,
        &format!(
            "GET http://{target}/svc.txt HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(as_proxy, (200, "from the other service\n".to_owned()));
    let by_host = raw_request(
        outbound,
        &format!("GET /svc.txt HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(by_host, (200, "from the other service\n".to_owned()));
    // By name, through the resolver (and its cache); a name with no address is a 502.
    let by_name = raw_request(
        outbound,
        &format!(
            "GET /svc.txt HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            target.port()
        ),
    );
    assert_eq!(by_name, (200, "from the other service\n".to_owned()));
    let unresolvable = raw_request(
        outbound,
        "GET /svc.txt HTTP/1.1\r\nHost: no-such-service.invalid\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(unresolvable.0, 502);
    let missing = raw_request(
        outbound,
        &format!("GET /nothing HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(missing.0, 404, "the service's own answer passes through");

    // Not proxied: HTTPS tunnels, and a destination that is this listener (a loop).
    let connect = raw_request(
        outbound,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(
        connect.0, 405,
        "Pingora refuses CONNECT before any phase runs"
    );
    let looped = raw_request(
        outbound,
        &format!("GET /svc.txt HTTP/1.1\r\nHost: {outbound}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(looped.0, 508);

    let metrics = http_get(sidecar.admin, "/metrics").unwrap().body;
    for counted in [
        "bulwark_outbound_requests_total{grpc_status=\"\",protocol=\"http1\",status_class=\"2xx\"} 3",
        // The 404 (Pingora's own CONNECT refusal comes before any phase, uncounted).
        "bulwark_outbound_requests_total{grpc_status=\"\",protocol=\"http1\",status_class=\"4xx\"} 1",
        // The unresolvable name and the loop.
        "bulwark_outbound_requests_total{grpc_status=\"\",protocol=\"http1\",status_class=\"5xx\"} 2",
    ] {
        assert!(metrics.contains(counted), "{counted}:\n{metrics}");
    }
    assert!(
        !metrics.contains("bulwark_inbound_requests_total{"),
        "outbound calls are not counted as inbound:\n{metrics}"
    );

    // What the sidecar answers itself says why, in a header and a JSON body.
    assert_sidecar_answer(
        outbound,
        "GET /svc.txt HTTP/1.1\r\nHost: no-such-service.invalid\r\nConnection: close\r\n\r\n",
        502,
        "upstream_unreachable",
    );
    assert_sidecar_answer(
        outbound,
        &format!("GET /svc.txt HTTP/1.1\r\nHost: {outbound}\r\nConnection: close\r\n\r\n"),
        508,
        "loop_detected",
    );
    assert_sidecar_answer(
        outbound,
        "GET /svc.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
        400,
        "bad_request",
    );
    // A service that refuses connections: counted as an upstream connect error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_sidecar_answer(
        outbound,
        &format!("GET / HTTP/1.1\r\nHost: {closed}\r\nConnection: close\r\n\r\n"),
        502,
        "upstream_unreachable",
    );
    // A request is counted done in its logging phase, which runs after the client has the
    // answer: wait for the last one.
    let signals = [
        "bulwark_upstream_errors_total{kind=\"connect\",listener=\"outbound\"} 3",
        "bulwark_request_duration_seconds_count{listener=\"outbound\",outcome=\"upstream\"} 4",
        "bulwark_request_duration_seconds_count{listener=\"outbound\",outcome=\"loop_detected\"} 2",
        "bulwark_requests_in_flight{listener=\"outbound\"} 0",
    ];
    bulwark_e2e::eventually(Duration::from_secs(5), "the outbound signals", || {
        let metrics = http_get(sidecar.admin, "/metrics").unwrap().body;
        signals.iter().all(|s| metrics.contains(s)).then_some(())
    });
}
