//! Backends whose failures a test controls (`fault_upstream.py`): each answers with its name,
//! can be told to answer a status, be slow, reset or truncate, counts what it served, and can
//! be killed (SIGKILL) and started again on the same port.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    free_ports,
    process::{Running, http_get, http_post, wait_for_status},
};

pub struct FaultUpstream {
    pub name: String,
    pub addr: SocketAddr,
    dir: PathBuf,
    /// Its certificate and key files, when it serves HTTPS.
    tls: Option<(PathBuf, PathBuf)>,
    process: Option<Running>,
}

impl FaultUpstream {
    /// Starts `name` on a free loopback port, its log in `dir`; waits until it answers.
    pub fn start(dir: &Path, name: &str) -> FaultUpstream {
        let [port] = free_ports();
        let mut upstream = FaultUpstream {
            name: name.to_owned(),
            addr: ([127, 0, 0, 1], port).into(),
            dir: dir.to_path_buf(),
            tls: None,
            process: None,
        };
        upstream.restart();
        upstream
    }

    /// As [`FaultUpstream::start`], serving HTTPS with `cert_pem` (the chain) and `key_pem`.
    /// The control calls (`set_mode`, `count`) speak plain HTTP: not for these.
    pub fn start_tls(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> FaultUpstream {
        let [port] = free_ports();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let mut upstream = FaultUpstream {
            name: name.to_owned(),
            addr: ([127, 0, 0, 1], port).into(),
            dir: dir.to_path_buf(),
            tls: Some((cert, key)),
            process: None,
        };
        upstream.restart();
        upstream
    }

    /// Starts it again on its port (after [`FaultUpstream::kill`]), in the `ok` mode.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("python3");
        cmd.arg(crate::repo_root().join("e2e/src/fault_upstream.py"))
            .arg(self.addr.port().to_string())
            .arg(&self.name);
        if let Some((cert, key)) = &self.tls {
            cmd.arg(cert).arg(key);
        }
        let log = self.dir.join(format!("{}.log", self.name));
        self.process = Some(Running::spawn(&self.name, cmd, &log));
        if self.tls.is_some() {
            crate::eventually(
                Duration::from_secs(10),
                "the HTTPS upstream to listen",
                || std::net::TcpStream::connect(self.addr).ok(),
            );
        } else {
            wait_for_status(self.addr, "/__count", 200, Duration::from_secs(10));
        }
    }

    /// SIGKILL: connections refused from now on.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// `ok`, `status:N`, `slow:MS`, `reset` or `truncate`.
    pub fn set_mode(&self, mode: &str) {
        let response = http_post(self.addr, "/__mode", mode, &[]).expect("the upstream answers");
        assert_eq!(response.status, 200, "{}: mode {mode}", self.name);
    }

    /// Requests served so far (control calls excluded).
    pub fn count(&self) -> u64 {
        http_get(self.addr, "/__count")
            .expect("the upstream answers")
            .body
            .trim()
            .parse()
            .expect("a count")
    }
}
