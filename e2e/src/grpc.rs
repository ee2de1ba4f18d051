//! A real gRPC stack on both sides of the sidecar: `grpc_echo.py` over PyPI grpcio (the SDK
//! venv, [`crate::sdks`]) as the server (service `bulwark.test.Echo`) and as the client.

use std::{net::SocketAddr, path::Path, process::Command};

use serde_json::Value;

use crate::{
    process::{Running, json_output, spawn_listening},
    repo_root, sdks, unique_name,
};

fn script() -> Command {
    let mut cmd = Command::new(sdks::python_interpreter());
    cmd.arg(repo_root().join("e2e/src/grpc_echo.py"));
    cmd
}

/// The echo server on a free loopback port; killed on drop.
pub struct GrpcEcho {
    pub addr: SocketAddr,
    process: Running,
}

impl GrpcEcho {
    /// Starts it (output in `dir`); returns once it listens.
    pub fn start(dir: &Path) -> GrpcEcho {
        Self::start_with(dir, &[])
    }

    /// One whose every Unary call fails `UNAVAILABLE`, as a server going down answers.
    pub fn start_unavailable(dir: &Path) -> GrpcEcho {
        Self::start_with(dir, &["unavailable"])
    }

    /// One serving HTTP/2 over TLS with `cert` and `key` (PEM).
    pub fn start_tls(dir: &Path, cert: &str, key: &str) -> GrpcEcho {
        let name = unique_name("grpc-echo-tls");
        let (cert_file, key_file) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        Self::start_with(
            dir,
            &[
                "tls",
                cert_file.to_str().unwrap(),
                key_file.to_str().unwrap(),
            ],
        )
    }

    fn start_with(dir: &Path, args: &[&str]) -> GrpcEcho {
        let output = dir.join(format!("{}.out", unique_name("grpc-echo")));
        let mut cmd = script();
        cmd.args(["serve", "0"]).args(args);
        let (process, port) = spawn_listening("the gRPC echo server", cmd, &output);
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
    let mut cmd = script();
    cmd.args(["call", &target.to_string(), method, &spec.to_string()]);
    json_output("the gRPC client", &mut cmd)
}

/// A client on one channel with a server stream in flight (`drain-probe`): [`DrainProbe::start`]
/// returns once the stream's first message arrived.
pub struct DrainProbe(std::process::Child);

impl DrainProbe {
    pub fn start(target: SocketAddr) -> DrainProbe {
        use std::io::BufRead;
        let mut child = script()
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
