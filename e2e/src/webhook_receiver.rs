//! Real webhook receivers: `webhook_receiver.py` and `webhook_receiver.js`, the same small server
//! over the official Standard Webhooks library of each language (PyPI and npm `standardwebhooks`,
//! pinned in e2e/peers/versions.env and installed by `e2e/peers/install-sdks.sh`). Each verifies
//! every delivery with `Webhook(secret).verify(body, headers)`, logs what it got and what it
//! answered, and answers as a test tells it (`ok`, `fail`, `slow`, `ratelimit`, for the next N
//! deliveries or until told otherwise). It can be killed and started again on the same port,
//! with the same log.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::Deserialize;
use serde_json::Value;

use crate::{
    eventually,
    process::{Running, http_get, http_post, spawn_listening},
    repo_root, sdks, unique_name,
};

/// Which official library verifies the deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    /// PyPI `standardwebhooks`, in `webhook_receiver.py` (a `ThreadingHTTPServer`).
    Python,
    /// npm `standardwebhooks`, in `webhook_receiver.js` (node's `http`).
    Node,
}

impl Library {
    pub const ALL: [Library; 2] = [Library::Python, Library::Node];

    pub fn name(self) -> &'static str {
        match self {
            Library::Python => "python",
            Library::Node => "node",
        }
    }

    fn command(self) -> Command {
        match self {
            Library::Python => {
                let mut cmd = Command::new(sdks::python_interpreter());
                cmd.arg(repo_root().join("e2e/src/webhook_receiver.py"));
                cmd
            }
            Library::Node => {
                let mut cmd = Command::new("node");
                cmd.arg(repo_root().join("e2e/src/webhook_receiver.js"))
                    .env("NODE_PATH", sdks::node_modules());
                cmd
            }
        }
    }
}

/// One delivery as the receiver logged it.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers (`None`: absent).
    pub id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    /// Whether the library's `verify()` accepted it (signature, timestamp within ±5 min, and a
    /// body that parses as JSON: the libraries parse it).
    pub verified: bool,
    /// What `verify()` threw (`"WebhookVerificationError: No matching signature found"`).
    pub error: Option<String>,
    /// The request target, query included.
    pub path: String,
    /// The body parsed as JSON; `Null` when it is not JSON.
    pub body: Value,
    /// The body as received (UTF-8, invalid bytes replaced).
    pub body_text: String,
    /// The status it answered (for `slow`, the one it answered after the delay).
    pub status: u16,
    /// When the request arrived, in unix seconds.
    pub received_at: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogLine {
    id: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
    verified: bool,
    error: Option<String>,
    path: String,
    body: String,
    status: u16,
    received_at: f64,
}

/// A running receiver; killed on drop.
pub struct WebhookReceiver {
    library: Library,
    secret: String,
    port: u16,
    /// The deliveries, one JSON line each (kept across restarts).
    log: PathBuf,
    /// The program's stdout and stderr (`listening PORT`, or why it failed).
    output: PathBuf,
    /// Certificate chain and key (PEM files) when it serves HTTPS.
    tls: Option<(PathBuf, PathBuf)>,
    process: Option<Running>,
}

impl WebhookReceiver {
    /// Starts a receiver for `library` on a free loopback port, verifying with `secret`
    /// (`whsec_<base64 key>`), its log and output files in `dir`; returns once it listens.
    pub fn start(library: Library, dir: &Path, secret: &str) -> WebhookReceiver {
        Self::launched(library, dir, secret, None)
    }

    /// A Python receiver serving HTTPS with the PEM certificate chain `cert` and key `key`; its
    /// [`url`](Self::url)s are `https://localhost:PORT/…`. Its control calls ([`Self::set_mode`],
    /// [`Self::mode`]) speak plain HTTP, so it stays in the `ok` mode.
    pub fn start_tls(dir: &Path, secret: &str, cert: &Path, key: &Path) -> WebhookReceiver {
        let tls = Some((cert.to_owned(), key.to_owned()));
        Self::launched(Library::Python, dir, secret, tls)
    }

    fn launched(
        library: Library,
        dir: &Path,
        secret: &str,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> WebhookReceiver {
        let name = unique_name(&format!("webhooks-{}", library.name()));
        let mut receiver = WebhookReceiver {
            library,
            secret: secret.to_owned(),
            port: 0,
            log: dir.join(format!("{name}.jsonl")),
            output: dir.join(format!("{name}.out")),
            tls,
            process: None,
        };
        receiver.launch();
        receiver
    }

    /// Spawns the program on `self.port` (0: any) and waits for its `listening PORT` line.
    fn launch(&mut self) {
        let mut cmd = self.library.command();
        cmd.arg(self.port.to_string())
            .arg(&self.log)
            .arg(&self.secret);
        if let Some((cert, key)) = &self.tls {
            cmd.arg(cert).arg(key);
        }
        let what = format!("the {} webhook receiver", self.library.name());
        let (process, port) = spawn_listening(&what, cmd, &self.output);
        self.process = Some(process);
        assert!(
            self.port == 0 || self.port == port,
            "{what} listens on {port}, not {}",
            self.port
        );
        self.port = port;
    }

    pub fn library(&self) -> Library {
        self.library
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `http://127.0.0.1:PORT/path`, or `https://localhost:PORT/path` when it serves HTTPS (a
    /// leading `/` is optional).
    pub fn url(&self, path: &str) -> String {
        let origin = match self.tls {
            Some(_) => "https://localhost",
            None => "http://127.0.0.1",
        };
        format!("{origin}:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// The file the deliveries are logged to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Every delivery so far, in arrival order (control calls are not deliveries). A line is
    /// logged before its answer goes out: once a sender has an answer, its delivery is here.
    pub fn received(&self) -> Vec<Received> {
        let text = match fs::read_to_string(&self.log) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("cannot read {}: {e}", self.log.display()),
        };
        // Only whole lines: one being appended right now has no newline yet.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|line| {
                let l: LogLine = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: {e}: {line}", self.log.display()));
                Received {
                    id: l.id,
                    timestamp: l.timestamp,
                    signature: l.signature,
                    verified: l.verified,
                    error: l.error,
                    path: l.path,
                    body: serde_json::from_str(&l.body).unwrap_or(Value::Null),
                    body_text: l.body,
                    status: l.status,
                    received_at: l.received_at,
                }
            })
            .collect()
    }

    /// Waits until at least `count` deliveries were logged; returns them all.
    pub fn wait_for_deliveries(&self, count: usize, timeout: Duration) -> Vec<Received> {
        eventually(
            timeout,
            &format!("{count} deliveries to the {} receiver", self.library.name()),
            || Some(self.received()).filter(|r| r.len() >= count),
        )
    }

    /// Sets how verified deliveries are answered (`POST /_control`): `{"mode":"ok"}` (204),
    /// `{"mode":"fail","status":503}`, `{"mode":"slow","delaySeconds":3}` (then 204) or
    /// `{"mode":"ratelimit","retryAfter":"1"}` (429 with `Retry-After`); with `"times": N` it
    /// applies to the next N verified deliveries, then the mode is `ok` again. Unverified
    /// deliveries are answered 401 whatever the mode, and do not count. Panics if refused.
    pub fn set_mode(&self, mode: Value) {
        let response = http_post(self.addr(), "/_control", &mode.to_string(), &[])
            .unwrap_or_else(|| panic!("the {} receiver does not answer", self.library.name()));
        assert_eq!(
            response.status,
            200,
            "the {} receiver refused mode {mode}: {}",
            self.library.name(),
            response.body
        );
    }

    /// The current mode (`GET /_control`), with the deliveries left under `times` if set.
    pub fn mode(&self) -> Value {
        let response = http_get(self.addr(), "/_control")
            .unwrap_or_else(|| panic!("the {} receiver does not answer", self.library.name()));
        assert_eq!(response.status, 200, "{}", response.body);
        serde_json::from_str(&response.body).expect("the mode is JSON")
    }

    /// SIGKILL: connections are refused until [`WebhookReceiver::restart`].
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts it again (killing it first if it runs) on the same port, appending to the same
    /// log, in the `ok` mode; returns once it listens.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}
