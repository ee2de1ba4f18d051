//! Upgrades through the real sidecar binary: a WebSocket echo server (PyPI websockets) as the
//! app and its client through the inbound listener.

use std::time::Duration;

use bulwark_e2e::{
    eventually,
    process::{http_get, wait_for_status},
    sidecar::Sidecar,
    websocket::{WebSocketEcho, talk},
};
use serde_json::json;

/// The handshake (101), messages both ways, a 512 KiB one after an idle wait longer than any
/// request timeout of HTTP/1.1's: the upgraded connection is a tunnel, counted once, as one
/// 1xx request.
#[test]
fn a_websocket_passes_through_and_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = WebSocketEcho::start(dir.path());
    let sidecar = Sidecar::start(
        app.addr,
        &dir.path().join("state"),
        &["--request-header-timeout-seconds", "1"],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    let url = format!("ws://{}/echo", sidecar.inbound);
    let result = talk(
        &url,
        &json!({"messages": ["hello", "é ✓"], "pause": 2, "large": 524_288}),
    );
    assert_eq!(result["status"], 101, "{result}");
    assert_eq!(result["echoed"], json!(["hello", "é ✓"]));
    assert_eq!(result["large"], 524_288, "{result}");
    eventually(Duration::from_secs(5), "one request counted", || {
        let metrics = http_get(sidecar.admin, "/metrics")?.body;
        let counted: Vec<_> = metrics
            .lines()
            .filter(|l| l.starts_with("bulwark_inbound_requests_total{"))
            .collect();
        (counted
            == ["bulwark_inbound_requests_total{grpc_status=\"\",protocol=\"websocket\",status_class=\"1xx\"} 1"])
        .then_some(())
    });
}
