//! The real flagd (built from its Go modules by `e2e/peers/build-flagd.sh`, cached by version) as
//! a process on loopback, serving a flag file: the peer the flag tests compare the sidecar with.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use crate::{
    free_ports,
    process::{Running, wait_for_status},
    script_output,
};

/// The cached flagd binary; built on first use (`make peers` builds it ahead).
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| PathBuf::from(script_output("e2e/peers/build-flagd.sh").trim()))
}

/// A flagd serving one flag file. It listens on all interfaces (flagd has no bind option); the
/// tests only talk to it on loopback.
pub struct Flagd {
    /// OFREP (`/ofrep/v1/...`).
    pub ofrep: SocketAddr,
    /// The evaluation API (`flagd.evaluation.v1`, gRPC and Connect).
    pub rpc: SocketAddr,
    _process: Running,
}

impl Flagd {
    /// Starts flagd on `flag_file`, logging to `log`; returns once it is ready.
    pub fn start(flag_file: &Path, log: &Path) -> Flagd {
        let [rpc, ofrep, management, sync] = free_ports();
        let mut cmd = Command::new(binary());
        cmd.arg("start")
            .arg("--uri")
            .arg(format!("file:{}", flag_file.display()))
            .args(["--port", &rpc.to_string()])
            .args(["--ofrep-port", &ofrep.to_string()])
            .args(["--management-port", &management.to_string()])
            .args(["--sync-port", &sync.to_string()]);
        let process = Running::spawn("flagd", cmd, log);
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_status(
            loopback(management),
            "/readyz",
            200,
            Duration::from_secs(20),
        );
        Flagd {
            ofrep: loopback(ofrep),
            rpc: loopback(rpc),
            _process: process,
        }
    }
}
