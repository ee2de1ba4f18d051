//! A WebSocket echo server and client (`websocket_echo.py`, PyPI websockets in the SDK venv,
//! [`crate::sdks`]), to check that Upgrades pass through the sidecar.

use std::{net::SocketAddr, path::Path, process::Command};

use serde_json::Value;

use crate::{
    process::{Running, json_output, spawn_listening},
    repo_root, sdks, unique_name,
};

fn script() -> Command {
    let mut cmd = Command::new(sdks::python_interpreter());
    cmd.arg(repo_root().join("e2e/src/websocket_echo.py"));
    cmd
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
        let mut cmd = script();
        cmd.args(["serve", "0"]);
        let (process, port) = spawn_listening("the WebSocket echo server", cmd, &output);
        WebSocketEcho {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _process: process,
        }
    }
}

/// Connects to `url` and exchanges what `spec` says (see `websocket_echo.py`): `echoed`,
/// `large`, and the handshake's `status`.
pub fn talk(url: &str, spec: &Value) -> Value {
    let mut cmd = script();
    cmd.args(["talk", url, &spec.to_string()]);
    json_output("the WebSocket client", &mut cmd)
}
