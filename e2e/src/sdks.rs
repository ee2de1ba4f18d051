//! The OpenFeature SDKs the flag tests use as real clients, installed by
//! `e2e/peers/install-sdks.sh` (pinned versions, cached outside the clone), and the small client
//! programs in `e2e/sdk/` that drive them. The same venv and npm prefix hold the Standard Webhooks
//! libraries the webhook receivers use ([`crate::webhook_receiver`]), and grpcio, which
//! [`crate::grpc`] drives.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use serde_json::Value;

use crate::{repo_root, script_output};

struct Installed {
    /// The venv's interpreter: openfeature-sdk and its OFREP and flagd providers import, and
    /// standardwebhooks.
    python: PathBuf,
    /// The npm prefix's `node_modules`: @openfeature/server-sdk, the OFREP provider and
    /// standardwebhooks.
    node_modules: PathBuf,
}

fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let stdout = script_output("e2e/peers/install-sdks.sh");
        let mut lines = stdout.lines();
        let venv = PathBuf::from(lines.next().expect("the venv directory"));
        let prefix = PathBuf::from(lines.next().expect("the npm prefix"));
        Installed {
            python: venv.join("bin/python"),
            node_modules: prefix.join("node_modules"),
        }
    })
}

/// The venv's `bin/python` (installed on first use).
pub fn python_interpreter() -> &'static Path {
    &installed().python
}

/// The npm prefix's `node_modules`, for `NODE_PATH` (installed on first use).
pub fn node_modules() -> &'static Path {
    &installed().node_modules
}

/// Runs `cmd` with `evaluations` (a JSON list) on stdin; one JSON object per stdout line.
fn run(mut cmd: Command, evaluations: &Value) -> Vec<Value> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(evaluations.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// `e2e/sdk/python_client.py`: the Python SDK with `provider` (`ofrep` against a base URL,
/// `flagd-rpc` against `host:port`).
pub fn python(provider: &str, address: &str, evaluations: &Value) -> Vec<Value> {
    let mut cmd = Command::new(&installed().python);
    cmd.arg(repo_root().join("e2e/sdk/python_client.py"))
        .args([provider, address]);
    run(cmd, evaluations)
}

/// `e2e/sdk/ofrep_client.js`: the JavaScript server SDK with its OFREP provider.
pub fn javascript_ofrep(base_url: &str, evaluations: &Value) -> Vec<Value> {
    let mut cmd = Command::new("node");
    cmd.arg(repo_root().join("e2e/sdk/ofrep_client.js"))
        .arg(base_url)
        .env("NODE_PATH", &installed().node_modules);
    run(cmd, evaluations)
}
