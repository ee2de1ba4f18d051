//! The sidecar binary and a real upstream app (Python's `http.server`) as processes on loopback.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    free_ports,
    process::{Running, wait_for_status},
    workspace_binary,
};

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A static-file HTTP server serving `dir`, standing in for the app.
pub struct Upstream {
    pub addr: SocketAddr,
    _process: Running,
}

impl Upstream {
    /// Serves `dir`; waits until `probe` (a file in it) answers 200.
    pub fn start(dir: &Path, probe: &str) -> Upstream {
        let [port] = free_ports();
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir);
        let process = Running::spawn("upstream", cmd, &dir.join("../upstream.log"));
        let addr = loopback(port);
        wait_for_status(addr, &format!("/{probe}"), 200, Duration::from_secs(10));
        Upstream {
            addr,
            _process: process,
        }
    }
}

/// An app that records exactly what reached it (`recording_upstream.py`): each request's head
/// as it came on the wire, and its body, read leniently (the first number of the first
/// `Content-Length`), as a careless app would.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    log: PathBuf,
    _process: Running,
}

/// One request as the app received it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Received {
    /// The request line and headers, with their line ends.
    pub head: String,
    pub body: String,
}

impl Received {
    /// The request line (`GET /path HTTP/1.1`).
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

impl RecordingUpstream {
    /// Starts it with its log in `dir`; waits until it answers.
    pub fn start(dir: &Path) -> RecordingUpstream {
        let [port] = free_ports();
        let log = dir.join("received.jsonl");
        let mut cmd = Command::new("python3");
        cmd.arg(crate::repo_root().join("e2e/src/recording_upstream.py"))
            .arg(port.to_string())
            .arg(&log);
        let process = Running::spawn(
            "recording upstream",
            cmd,
            &dir.join("recording-upstream.log"),
        );
        let addr = loopback(port);
        wait_for_status(addr, "/ready", 200, Duration::from_secs(10));
        let upstream = RecordingUpstream {
            addr,
            log,
            _process: process,
        };
        upstream.clear();
        upstream
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("the recorder writes JSON lines"))
            .collect()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What a standalone sidecar runs against, in one temporary directory: an app serving `files`
/// from `www/`, and `policies/policy.yaml` holding a policy.
pub struct Standalone {
    pub dir: tempfile::TempDir,
    /// The `--config-dir`.
    pub config: PathBuf,
    pub app: Upstream,
}

impl Standalone {
    /// Writes `files` (path under `www/`, content) and `policy`, then starts the app; it is
    /// ready once the first file answers.
    pub fn new(policy: &str, files: &[(&str, &[u8])]) -> Standalone {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        for (path, content) in files {
            let file = www.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        let config = dir.path().join("policies");
        std::fs::create_dir(&config).unwrap();
        std::fs::write(config.join("policy.yaml"), policy).unwrap();
        let app = Upstream::start(&www, files[0].0);
        Standalone { dir, config, app }
    }
}

/// The listener addresses of one sidecar.
#[derive(Clone, Copy, Debug)]
pub struct Listeners {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// flagd's evaluation API.
    pub flagd: SocketAddr,
}

impl Listeners {
    /// Free loopback ports for all four.
    pub fn free() -> Listeners {
        let [inbound, outbound, admin, flagd] = free_ports().map(loopback);
        Listeners {
            inbound,
            outbound,
            admin,
            flagd,
        }
    }
}

/// A running `bulwark-sidecar`.
pub struct Sidecar {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub flagd: SocketAddr,
    pub state_dir: PathBuf,
    pub process: Running,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Sidecar {
    /// Starts a sidecar in front of `app`, with `extra` flags (e.g. `--config-dir`), state in
    /// `state_dir`, and waits until its admin listener answers `/healthz` and its proxy
    /// listeners accept connections.
    pub fn start(app: SocketAddr, state_dir: &Path, extra: &[&str]) -> Sidecar {
        Self::start_with_env(app, state_dir, extra, &[])
    }

    /// Spawns a sidecar on the given listener addresses without waiting for it (with
    /// `--upgrade` it serves only once the running one hands its sockets over).
    pub fn spawn(app: SocketAddr, state_dir: &Path, at: Listeners, extra: &[&str]) -> Sidecar {
        Self::spawn_with_env(app, state_dir, at, extra, &[])
    }

    /// [`Sidecar::start`] with environment variables set for the process (e.g.
    /// `SSL_CERT_FILE`, the roots its outgoing TLS trusts).
    pub fn start_with_env(
        app: SocketAddr,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Sidecar {
        let sidecar = Self::spawn_with_env(app, state_dir, Listeners::free(), extra, env);
        wait_for_status(sidecar.admin, "/healthz", 200, Duration::from_secs(10));
        // Pingora starts the admin service before the proxies: wait until they accept too.
        for listener in [sidecar.inbound, sidecar.outbound] {
            crate::eventually(Duration::from_secs(10), "the proxy listeners", || {
                std::net::TcpStream::connect(listener).ok()
            });
        }
        sidecar
    }

    fn spawn_with_env(
        app: SocketAddr,
        state_dir: &Path,
        at: Listeners,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Sidecar {
        std::fs::create_dir_all(state_dir).unwrap();
        let mut cmd = Command::new(workspace_binary("bulwark-sidecar"));
        cmd.args(["--inbound-listen", &at.inbound.to_string()])
            .args(["--outbound-listen", &at.outbound.to_string()])
            .args(["--app", &app.to_string()])
            .args(["--admin-listen", &at.admin.to_string()])
            .args(["--flagd-listen", &at.flagd.to_string()])
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .envs(env.iter().copied());
        let log = state_dir.join(format!("sidecar-{}.log", crate::unique_name("run")));
        Sidecar {
            inbound: at.inbound,
            outbound: at.outbound,
            admin: at.admin,
            flagd: at.flagd,
            state_dir: state_dir.to_path_buf(),
            process: Running::spawn("bulwark-sidecar", cmd, &log),
            log,
        }
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sum of the `/metrics` samples whose line starts with `series` (a name, or a name
    /// and the start of its labels); 0 when there is none.
    pub fn metric_sum(&self, series: &str) -> f64 {
        let text = crate::process::http_get(self.admin, "/metrics")
            .expect("the admin listener answers")
            .body;
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Its resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .expect("the sidecar runs");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The addresses it listens on.
    pub fn listeners(&self) -> Listeners {
        Listeners {
            inbound: self.inbound,
            outbound: self.outbound,
            admin: self.admin,
            flagd: self.flagd,
        }
    }
}
