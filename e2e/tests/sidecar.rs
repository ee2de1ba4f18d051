//! The sidecar binary in front of a real upstream HTTP server on loopback, driven over TCP.

use std::{net::SocketAddr, process::Command, time::Duration};

use bulwark_e2e::{
    free_ports,
    process::{Running, http_get, wait_for_status},
    workspace_binary,
};

#[test]
fn proxies_to_the_app_and_reports_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from the app\n").unwrap();
    let [app_port, inbound_port, admin_port] = free_ports();
    let addr = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };

    let mut app_cmd = Command::new("python3");
    app_cmd
        .args([
            "-m",
            "http.server",
            &app_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir.path());
    let _app = Running::spawn("upstream", app_cmd, &dir.path().join("app.log"));
    wait_for_status(addr(app_port), "/hello.txt", 200, Duration::from_secs(10));

    let mut sidecar_cmd = Command::new(workspace_binary("bulwark-sidecar"));
    sidecar_cmd
        .args(["--inbound-listen", &addr(inbound_port).to_string()])
        .args(["--app", &addr(app_port).to_string()])
        .args(["--admin-listen", &addr(admin_port).to_string()])
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    let mut sidecar = Running::spawn(
        "bulwark-sidecar",
        sidecar_cmd,
        &dir.path().join("sidecar.log"),
    );

    wait_for_status(addr(admin_port), "/healthz", 200, Duration::from_secs(10));
    wait_for_status(addr(admin_port), "/readyz", 200, Duration::from_secs(10));

    let proxied = http_get(addr(inbound_port), "/hello.txt").expect("the inbound listener answers");
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.body, "hello from the app\n");
    let missing = http_get(addr(inbound_port), "/missing").unwrap();
    assert_eq!(missing.status, 404, "the app's own answers pass through");

    let metrics = http_get(addr(admin_port), "/metrics").unwrap().body;
    assert!(
        metrics.contains("bulwark_inbound_requests_total{status_class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulwark_inbound_requests_total{status_class=\"4xx\"} 1"),
        "{metrics}"
    );

    let status = sidecar.terminate(Duration::from_secs(15));
    assert!(status.success(), "sidecar exited with {status} on SIGTERM");
}
