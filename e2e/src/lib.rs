//! Harness for Bulwark's end-to-end tests: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager built from their Go modules by `e2e/controlplane/`) on loopback, the
//! pinned `kubectl` and `helm` by path, fresh namespaces, and the project's own binaries.
//!
//! A test binary gets one shared control plane ([`ControlPlane::shared`]), started on free ports
//! and tied to the test process (`up.sh --watch-pid`), so nothing outlives the run even when a
//! test panics. With `BULWARK_CP_DIR` set (as `make demo` leaves it), that running plane is used.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub mod fault_upstream;
pub mod flagd;
pub mod grpc;
pub mod keep_alive;
pub mod operator;
pub mod process;
pub mod redis;
pub mod sdks;
pub mod sidecar;
pub mod tls;
pub mod webhook_receiver;
pub mod websocket;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Runs a script of the repository (`e2e/peers/build-flagd.sh`) with bash and returns its
/// stdout; panics with its stderr when it fails.
pub fn script_output(relative: &str) -> String {
    let script = repo_root().join(relative);
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A fixture's expectations: the `# expect: <substring>` lines at its top.
pub fn fixture_expectations(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect:").map(|e| e.trim().to_owned()))
        .filter(|e| !e.is_empty())
        .collect()
}

/// A built binary of this workspace (`make test` builds them before the e2e tests run).
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (make test does)",
        path.display()
    );
    path
}

/// `N` distinct ports that were free a moment ago on 127.0.0.1 (the listeners are held until
/// all are chosen, so the same port is never returned twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// A name unique within this machine's test runs, for namespaces and releases.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{:x}{:x}{}",
        std::process::id() % 4096,
        nanos % 65536,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running control plane, as described by the `env` file `up.sh` writes.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
    /// Whether this handle started the plane (and so stops it on drop).
    owned: bool,
}

impl ControlPlane {
    /// The control plane shared by every test of this binary: the one named by `BULWARK_CP_DIR`,
    /// or a new one that lives as long as this process.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var_os("BULWARK_CP_DIR") {
            Some(dir) => Self::from_dir(PathBuf::from(dir), false),
            // Statics are never dropped: the watchdog stops this plane when the process exits.
            None => Self::start(),
        })
    }

    /// A new control plane for tests that need isolation (e.g. one without Bulwark's CRDs).
    /// Stopped and removed on drop.
    pub fn start() -> ControlPlane {
        let dir = std::env::temp_dir().join(unique_name("bulwark-cp"));
        let [apiserver, etcd, etcd_peer, controller_manager] = free_ports();
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/controlplane/up.sh"))
            .args(["--dir", dir.to_str().unwrap()])
            .args(["--apiserver-port", &apiserver.to_string()])
            .args(["--etcd-port", &etcd.to_string()])
            .args(["--etcd-peer-port", &etcd_peer.to_string()])
            .args(["--controller-manager-port", &controller_manager.to_string()])
            .args(["--watch-pid", &std::process::id().to_string()])
            .output()
            .expect("cannot run e2e/controlplane/up.sh");
        assert!(
            out.status.success(),
            "up.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::from_dir(dir, true)
    }

    fn from_dir(dir: PathBuf, owned: bool) -> ControlPlane {
        let env = fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("no control plane in {}: {e}", dir.display()));
        let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        ControlPlane {
            kubeconfig: PathBuf::from(vars["KUBECONFIG"]),
            bin: PathBuf::from(vars["BULWARK_CP_BIN"]),
            dir,
            owned,
        }
    }

    /// The pinned kubectl against this plane.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// The pinned helm against this plane.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("helm"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        // Keep helm's caches and config out of the user's home.
        let home = self.dir.join("helm");
        cmd.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    /// Runs helm, panicking with its stderr on failure; returns stdout.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        stdout_or_panic("helm", args, self.helm().args(args).output().unwrap())
    }

    /// Runs kubectl and returns its output, successful or not.
    pub fn run_kubectl(&self, args: &[&str]) -> Output {
        self.kubectl()
            .args(args)
            .output()
            .expect("cannot run kubectl")
    }

    /// Runs kubectl, panicking with its stderr on failure; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        stdout_or_panic("kubectl", args, self.run_kubectl(args))
    }

    /// Sets the injection webhook's `caBundle` (base64 PEM), as the operator would.
    pub fn set_injector_ca_bundle(&self, ca_base64: &str) {
        self.kubectl_ok(&[
            "patch",
            "mutatingwebhookconfiguration/bulwark-sidecar-injector",
            "--type=json",
            "-p",
            &format!(
                r#"[{{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"{ca_base64}"}}]"#
            ),
        ]);
    }

    /// Applies `crds/` and waits until every Bulwark CRD is Established. Idempotent.
    pub fn install_crds(&self) {
        let crds = repo_root().join("crds");
        self.kubectl_ok(&["apply", "-f", crds.to_str().unwrap()]);
        let names: Vec<String> = bulwark_api::crd::all()
            .into_iter()
            .map(|(_, c)| format!("crd/{}", c.metadata.name.unwrap()))
            .collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        self.kubectl_ok(&args);
    }

    /// A namespace of its own for one test; deleted (without waiting) on drop.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let name = unique_name(prefix);
        self.kubectl_ok(&["create", "namespace", &name]);
        Namespace { cp: self, name }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("bash")
                .arg(repo_root().join("e2e/controlplane/down.sh"))
                .args(["--dir", self.dir.to_str().unwrap()])
                .output();
        }
    }
}

/// A test's namespace.
pub struct Namespace<'a> {
    cp: &'a ControlPlane,
    pub name: String,
}

impl Namespace<'_> {
    /// kubectl with `-n <this namespace>`.
    pub fn run_kubectl(&self, args: &[&str]) -> Output {
        self.cp
            .kubectl()
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("cannot run kubectl")
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        stdout_or_panic("kubectl", args, self.run_kubectl(args))
    }

    /// Waits for the default ServiceAccount (pods need it; the controller-manager creates it
    /// shortly after the namespace).
    pub fn wait_for_default_service_account(&self) {
        eventually(
            Duration::from_secs(20),
            "the default ServiceAccount",
            || {
                self.run_kubectl(&["get", "serviceaccount", "default"])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cp
            .run_kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// stdout of a successful command; otherwise a panic that shows what ran and what it said.
pub fn stdout_or_panic(program: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("output is UTF-8")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Collapses runs of whitespace, to compare text that a tool may have re-wrapped.
pub fn squash_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs `cmd` with `input` on its stdin; returns its output, successful or not.
pub fn output_with_stdin(mut cmd: Command, input: &str) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts that `promtool check metrics` (Prometheus' own linter: names, units, `_total`
/// counters, help text) finds nothing wrong in `metrics`. promtool is installed by
/// scripts/install-deps.sh.
pub fn promtool_check(metrics: &str) {
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "metrics"]);
    let out = output_with_stdin(promtool, metrics);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
