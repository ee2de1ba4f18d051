//! A real Redis server (Debian's `redis-server`, installed by scripts/install-deps.sh) on a free
//! loopback port, without persistence, killed when the handle drops.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use crate::{eventually, free_ports, process::Running};

pub struct Redis {
    pub port: u16,
    process: Option<Running>,
    log: std::path::PathBuf,
    extra: Vec<String>,
}

impl Redis {
    /// Starts a server and waits until it accepts connections. Its log goes to `dir`.
    pub fn start(dir: &Path) -> Redis {
        let [port] = free_ports::<1>();
        Self::start_with(dir, port, Vec::new())
    }

    /// Starts a node for a Redis Cluster (join it with `redis-cli --cluster create`).
    pub fn start_cluster_node(dir: &Path) -> Redis {
        let [port] = free_ports::<1>();
        let conf = dir.join(format!("nodes-{port}.conf"));
        let extra = vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            conf.to_string_lossy().into_owned(),
        ];
        Self::start_with(dir, port, extra)
    }

    fn start_with(dir: &Path, port: u16, extra: Vec<String>) -> Redis {
        let mut redis = Redis {
            port,
            process: None,
            log: dir.join(format!("redis-{port}.log")),
            extra,
        };
        redis.restart();
        redis
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(&self.extra);
        self.process = Some(Running::spawn("redis-server", cmd, &self.log));
        let addr = self.addr();
        eventually(Duration::from_secs(10), "redis-server to listen", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        });
    }

    /// For a server kept in a `static` (never dropped): killed when this test process exits.
    pub fn kill_when_this_process_exits(&self) {
        if let Some(process) = &self.process {
            process.kill_when_this_process_exits();
        }
    }

    /// SIGKILL, as a crash or a lost node would end it.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}
