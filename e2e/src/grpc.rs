//! A real gRPC stack on both sides of the sidecar: `grpc_echo.py` over PyPI grpcio (the SDK
//! venv, [`crate::sdks`]) as the server (service `bulwark.test.Echo`) and as the client.

use std::{fs, net::SocketAddr, path::Path, process::Command, time::Duration};

use serde_json::Value;

use crate::{eventually, process::Running, repo_root, sdks, unique_name};

fn script() -> std::path::PathBuf {
    repo_root().join("e2e/src/grpc_echo.py")
}

/// The echo server on a free loopback port; killed on drop.
pub struct GrpcEcho {
    pub addr: SocketAddr,
    process: Running,
}

impl GrpcEcho {
    /// Starts it (output in `dir`); returns once it listens.
    pub fn start(dir: &Path) -> GrpcEcho {
        let output = dir.join(format!("{}.out", unique_name("grpc-echo")));
        let mut cmd = Command::new(sdks::python_interpreter());
        cmd.arg(script()).args(["serve", "0"]);
        let process = Running::spawn("the gRPC echo server", cmd, &output);
        let port: u16 = eventually(Duration::from_secs(20), "the gRPC echo server", || {
            let text = fs::read_to_string(&output).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("listening "))?
                .trim()
                .parse()
                .ok()
        });
        GrpcEcho {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            process,
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// One call of `method` to `target` with grpcio (see `grpc_echo.py` for `spec`): `code`,
/// `details`, `responses` (or `sizes`), `initial` and `trailing` metadata.
pub fn call(target: SocketAddr, method: &str, spec: &Value) -> Value {
    let output = Command::new(sdks::python_interpreter())
        .arg(script())
        .args(["call", &target.to_string(), method, &spec.to_string()])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the gRPC client printed no result ({e}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A client on one channel with a server stream in flight (`drain-probe`): [`DrainProbe::start`]
/// returns once the stream's first message arrived.
pub struct DrainProbe(std::process::Child);

impl DrainProbe {
    pub fn start(target: SocketAddr) -> DrainProbe {
        use std::io::BufRead;
        let mut child = Command::new(sdks::python_interpreter())
            .arg(script())
            .args(["drain-probe", &target.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python runs");
        let mut line = String::new();
        let stdout = child.stdout.as_mut().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "streaming", "the probe's stream did not start");
        DrainProbe(child)
    }

    /// Makes the unary call on the same channel, lets the stream finish; the JSON result.
    pub fn finish(mut self) -> Value {
        use std::io::Write;
        self.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let output = self.0.wait_with_output().unwrap();
        serde_json::from_slice(&output.stdout).expect("the probe's JSON")
    }
}
