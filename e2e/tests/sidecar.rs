//! The sidecar binary in front of a real upstream HTTP server on loopback, driven over TCP.

use std::time::Duration;

use bulwark_e2e::{
    process::{http_get, wait_for_status},
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
        metrics.contains("bulwark_inbound_requests_total{status_class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulwark_inbound_requests_total{status_class=\"4xx\"} 1"),
        "{metrics}"
    );

    let status = sidecar.process.terminate(Duration::from_secs(15));
    assert!(status.success(), "sidecar exited with {status} on SIGTERM");
}

/// An app that answers every request after a delay, so requests are in flight when the
/// sidecar is told to stop.
const SLOW_APP: &str = r#"
import http.server, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(1.0)
        body = b"slow ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
"#;

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let [port] = bulwark_e2e::free_ports();
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", SLOW_APP, &port.to_string()]);
    let _app = bulwark_e2e::process::Running::spawn("slow app", cmd, &dir.path().join("app.log"));
    let app = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    bulwark_e2e::eventually(Duration::from_secs(10), "the slow app to listen", || {
        std::net::TcpStream::connect(app).ok()
    });
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
