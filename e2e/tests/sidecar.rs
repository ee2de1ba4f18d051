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
