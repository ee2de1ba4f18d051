//! Child processes that are killed when their handle drops (a failing test leaves none behind),
//! and a tiny HTTP/1.1 client over std, so tests speak to the binaries as any client would.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::eventually;

/// A running child process; SIGKILLed on drop unless already stopped.
pub struct Running {
    child: Child,
    name: String,
}

impl Running {
    /// Spawns `cmd` with stdout/stderr to `log` (so a failure can be diagnosed from the file).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Running {
        let file = std::fs::File::create(log).expect("cannot create the log file");
        let child = cmd
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Running {
            child,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Also SIGKILLs the process when this test process exits, for a handle kept in a `static`,
    /// which is never dropped: a watchdog shell polls this process once a second.
    #[expect(
        clippy::zombie_processes,
        reason = "the watchdog outlives this process by design; init reaps it"
    )]
    pub fn kill_when_this_process_exits(&self) {
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null",
            me = std::process::id(),
            pid = self.pid(),
        );
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the watchdog of {}: {e}", self.name));
    }

    /// SIGKILL, as a crash would end it, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal_and_wait("TERM", timeout)
    }

    /// Sends `signal` (a name for `kill -s`, e.g. `QUIT`) and waits (bounded) for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status();
        let name = self.name.clone();
        eventually(
            timeout,
            &format!("{name} to exit after SIG{signal}"),
            || self.child.try_wait().unwrap(),
        )
    }
}

/// Spawns a peer program that prints `listening PORT` once bound (stdout and stderr to `log`)
/// and waits for that line: the process and the port. Panics with the program's output if it
/// does not listen within 20 s.
pub fn spawn_listening(name: &str, cmd: Command, log: &Path) -> (Running, u16) {
    let process = Running::spawn(name, cmd, log);
    let start = std::time::Instant::now();
    loop {
        let output = std::fs::read_to_string(log).unwrap_or_default();
        let listening = output.lines().find_map(|l| l.strip_prefix("listening "));
        if let Some(port) = listening.and_then(|p| p.trim().parse::<u16>().ok()) {
            return (process, port);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} did not start listening; its output ({}):\n{output}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a peer client program that prints its result as one JSON line; that value. Panics
/// with its output when there is none.
pub fn json_output(name: &str, cmd: &mut Command) -> serde_json::Value {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{name} printed no result ({e}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response: status code, head (status line and headers) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<HttpResponse> {
    http_request(addr, "GET", path, &[])
}

/// A request with extra headers, over HTTP/1.1 with `Connection: close`; `None` when nothing
/// answers.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    send_raw(addr, &request)
}

/// `POST path` with a JSON `body` and extra headers, over HTTP/1.1 with `Connection: close`.
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    send_raw(addr, &request)
}

/// Writes `request` exactly as given (a test may need any request line and headers) and reads
/// the response to the end; `None` when nothing answers.
pub fn send_raw(addr: SocketAddr, request: &str) -> Option<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// Waits until `GET path` answers `status`.
pub fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    timeout: Duration,
) -> HttpResponse {
    eventually(
        timeout,
        &format!("GET http://{addr}{path} to answer {status}"),
        || http_get(addr, path).filter(|r| r.status == status),
    )
}
