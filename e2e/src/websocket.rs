//! A WebSocket echo server and client (`websocket_echo.py`, PyPI websockets in the SDK venv,
//! [`crate::sdks`]), to check that Upgrades pass through the sidecar.

use std::{fs, net::SocketAddr, path::Path, process::Command, time::Duration};

use serde_json::Value;

use crate::{eventually, process::Running, repo_root, sdks, unique_name};

fn script() -> std::path::PathBuf {
    repo_root().join("e2e/src/websocket_echo.py")
}

/// The echo server on a free loopback port; killed on drop.
pub struct WebSocketEcho {
    pub addr: SocketAddr,
    _process: Running,
}

impl WebSocketEcho {
    /// Starts it (output in `dir`); returns once it listens.
    pub fn start(dir: &Path) -> WebSocketEcho {
        let output = dir.join(format!("{}.out", unique_name("websocket-echo")));
        let mut cmd = Command::new(sdks::python_interpreter());
        cmd.arg(script()).args(["serve", "0"]);
        let process = Running::spawn("the WebSocket echo server", cmd, &output);
        let port: u16 = eventually(Duration::from_secs(20), "the WebSocket echo server", || {
            let text = fs::read_to_string(&output).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("listening "))?
                .trim()
                .parse()
                .ok()
        });
        WebSocketEcho {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _process: process,
        }
    }
}

/// Connects to `url` and exchanges what `spec` says (see `websocket_echo.py`): `echoed`,
/// `large`, and the handshake's `status`.
pub fn talk(url: &str, spec: &Value) -> Value {
    let output = Command::new(sdks::python_interpreter())
        .arg(script())
        .args(["talk", url, &spec.to_string()])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the WebSocket client printed no result ({e}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
