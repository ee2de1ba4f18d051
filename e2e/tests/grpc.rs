//! HTTP/2 and gRPC through the real sidecar binary: a grpcio server as the app (or as the
//! destination of the app's calls) and the grpcio client, over h2c with prior knowledge, which
//! is what gRPC sends on a plaintext port. HTTP/1.1 clients share the inbound port.

use std::{net::SocketAddr, path::Path, time::Duration};

use bulwark_e2e::{
    grpc::{GrpcEcho, call},
    process::{http_get, send_raw, wait_for_status},
    sidecar::{RecordingUpstream, Sidecar, Upstream},
};
use serde_json::{Value, json};

/// A standalone sidecar in front of `app`, its config holding `policy` (if any), with `extra`
/// flags.
fn sidecar(dir: &Path, app: SocketAddr, policy: Option<&str>, extra: &[&str]) -> Sidecar {
    let config = dir.join("policies");
    std::fs::create_dir_all(&config).unwrap();
    if let Some(policy) = policy {
        std::fs::write(config.join("policy.yaml"), policy).unwrap();
    }
    let mut flags = vec!["--config-dir", config.to_str().unwrap()];
    flags.extend_from_slice(extra);
    let sidecar = Sidecar::start(app, &dir.join("state"), &flags);
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    sidecar
}

fn code(result: &Value) -> &str {
    result["code"].as_str().unwrap()
}

#[test]
fn grpc_calls_pass_through_the_inbound_listener_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let app = GrpcEcho::start(dir.path());
    let sidecar = sidecar(dir.path(), app.addr, None, &[]);

    let unary = call(
        sidecar.inbound,
        "Unary",
        &json!({"request": "hello", "metadata": {"x-client": "e2e"}}),
    );
    assert_eq!(code(&unary), "OK", "{unary}");
    assert_eq!(unary["responses"], json!(["hello"]));
    assert_eq!(unary["initial"]["x-initial"], "yes", "{unary}");
    // Trailers and the request's metadata made it through both hops.
    assert_eq!(unary["trailing"]["x-trailer"], "done", "{unary}");
    assert_eq!(unary["trailing"]["x-seen-client"], "e2e", "{unary}");
    assert_eq!(unary["trailing"]["x-seen-forwarded-for"], "127.0.0.1");

    let large = call(sidecar.inbound, "Unary", &json!({"size": 4_000_000}));
    assert_eq!(code(&large), "OK", "{large}");
    assert_eq!(large["sizes"], json!([4_000_000]));

    let stream = call(
        sidecar.inbound,
        "ServerStream",
        &json!({"request": "5:100"}),
    );
    assert_eq!(code(&stream), "OK", "{stream}");
    assert_eq!(stream["responses"], json!(["0", "1", "2", "3", "4"]));

    let bidi = call(
        sidecar.inbound,
        "BidiStream",
        &json!({"messages": ["a", "b", "c"]}),
    );
    assert_eq!(code(&bidi), "OK", "{bidi}");
    assert_eq!(bidi["responses"], json!(["a", "b", "c"]));

    // The app's own error status reaches the client as it sent it.
    let failed = call(sidecar.inbound, "Fail", &json!({"request": "NOT_FOUND"}));
    assert_eq!(code(&failed), "NOT_FOUND", "{failed}");
    assert_eq!(failed["details"], "failed as asked");

    // Five calls, five requests (counted as each one's logging ends), by gRPC status: OK in
    // trailers after messages, NOT_FOUND trailers-only.
    bulwark_e2e::eventually(Duration::from_secs(5), "5 requests counted", || {
        let metrics = http_get(sidecar.admin, "/metrics")?.body;
        (metrics.contains(
            "bulwark_inbound_requests_total{grpc_status=\"0\",protocol=\"grpc\",status_class=\"2xx\"} 4",
        ) && metrics.contains(
            "bulwark_inbound_requests_total{grpc_status=\"5\",protocol=\"grpc\",status_class=\"2xx\"} 1",
        ))
        .then_some(())
    });
}

#[test]
fn http1_and_http2_share_the_inbound_port() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello\n").unwrap();
    let app = Upstream::start(&www, "hello.txt");
    let sidecar = sidecar(dir.path(), app.addr, None, &[]);
    // HTTP/1.1 to the same port as the gRPC test's HTTP/2.
    let plain = http_get(sidecar.inbound, "/hello.txt").unwrap();
    assert_eq!((plain.status, plain.body.as_str()), (200, "hello\n"));
    // An HTTP/1.0 request shorter than the HTTP/2 preface is answered at once (Pingora's own
    // h2c switch waited for 24 bytes).
    let short = bulwark_e2e::process::send_raw(sidecar.inbound, "GET / HTTP/1.0\r\n\r\n")
        .expect("answered");
    assert_eq!(short.status, 200, "{short:?}");
}

/// gRPC-Web (what a browser sends, over HTTP/1.1, its trailers in the body) reaches an
/// HTTP/1.1 app as it came, not over h2c as gRPC does, its deadline passed on as what is left of
/// it; a limit refuses it in gRPC's terms, which gRPC-Web clients read from the header block.
#[test]
fn grpc_web_goes_to_the_app_as_it_came_and_is_refused_in_grpc_terms() {
    let dir = tempfile::tempdir().unwrap();
    let app = RecordingUpstream::start(dir.path());
    let policy = "apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: orders}
spec:
  selector: {matchLabels: {app: shop}}
  rules:
    - name: create
      match:
        grpc: {service: shop.v1.Orders, method: CreateOrder}
      key: [{type: ClientIP}]
      algorithm: FixedWindow
      rates: [{limit: 1, window: 1m}]
";
    let sidecar = sidecar(dir.path(), app.addr, Some(policy), &[]);
    // One message: the 5-byte prefix (no flags, length 2) and its bytes.
    let message = "\0\0\0\0\u{2}hi";
    let request = format!(
        "POST /shop.v1.Orders/CreateOrder HTTP/1.1\r\nHost: shop\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nGrpc-Timeout: 2S\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}",
        message.len()
    );
    let first = send_raw(sidecar.inbound, &request).expect("answered");
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "recorded"),
        "{first:?}"
    );
    let received = app.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].request_line(),
        "POST /shop.v1.Orders/CreateOrder HTTP/1.1"
    );
    assert_eq!(
        received[0].header_values("content-type"),
        ["application/grpc-web+proto"]
    );
    assert_eq!(received[0].body, message);
    // The deadline goes on as what is left of it, in microseconds.
    let left = received[0].header_values("grpc-timeout");
    let micros: u64 = left[0].strip_suffix('u').unwrap().parse().unwrap();
    assert!((1_000_000..2_000_000).contains(&micros), "{left:?}");

    let refused = send_raw(sidecar.inbound, &request).expect("answered");
    assert_eq!(refused.status, 200, "{refused:?}");
    assert_eq!(refused.header("grpc-status"), Some("8"), "{refused:?}");
    assert_eq!(
        refused.header("content-type"),
        Some("application/grpc-web+proto"),
        "gRPC-Web's own content type back"
    );
    assert_eq!(refused.header("bulwark-reason"), Some("rate_limited"));
    assert_eq!(
        app.received().len(),
        1,
        "the refused call never reached the app"
    );
}

#[test]
fn a_per_method_rate_limit_answers_resource_exhausted_that_the_client_surfaces() {
    let dir = tempfile::tempdir().unwrap();
    let app = GrpcEcho::start(dir.path());
    let policy = "apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: echo-unary}
spec:
  selector: {matchLabels: {app: echo}}
  rules:
    - name: unary
      match:
        grpc: {service: bulwark.test.Echo, method: Unary}
      key: [{type: ClientIP}]
      algorithm: FixedWindow
      rates: [{limit: 2, window: 1m}]
";
    let sidecar = sidecar(dir.path(), app.addr, Some(policy), &[]);
    let results: Vec<Value> = (0..3)
        .map(|_| call(sidecar.inbound, "Unary", &json!({"request": "hi"})))
        .collect();
    let codes: Vec<&str> = results.iter().map(code).collect();
    assert_eq!(codes, ["OK", "OK", "RESOURCE_EXHAUSTED"], "{results:?}");
    let refused = &results[2];
    assert!(
        refused["details"].as_str().unwrap().contains("rate limit"),
        "{refused}"
    );
    // The RateLimit fields and Retry-After come as metadata, with why the sidecar answered.
    let trailing = &refused["trailing"];
    assert_eq!(trailing["bulwark-reason"], "rate_limited", "{refused}");
    let retry_after: u64 = trailing["retry-after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{refused}");
    assert!(
        trailing["ratelimit"].as_str().unwrap().contains("r=0"),
        "{refused}"
    );
    assert_eq!(
        results[0]["initial"]["ratelimit-policy"],
        "\"unary\";q=2;w=60"
    );

    // Another method of the same service is not limited.
    let stream = call(sidecar.inbound, "ServerStream", &json!({"request": "2"}));
    assert_eq!(code(&stream), "OK", "{stream}");
    // The sidecar's refusal is counted as the gRPC status it answered, not as an HTTP 200 alone.
    assert_eq!(
        sidecar.metric_sum(
            "bulwark_inbound_requests_total{grpc_status=\"8\",protocol=\"grpc\",status_class=\"2xx\"}"
        ),
        1.0
    );
}

#[test]
fn the_apps_grpc_calls_go_through_the_outbound_listener_by_authority() {
    let dir = tempfile::tempdir().unwrap();
    let destination = GrpcEcho::start(dir.path());
    let sidecar = sidecar(dir.path(), "127.0.0.1:9".parse().unwrap(), None, &[]);
    // The app dials the sidecar and names the service in :authority, as with a proxy.
    let result = call(
        sidecar.outbound,
        "Unary",
        &json!({"request": "out", "authority": destination.addr.to_string()}),
    );
    assert_eq!(code(&result), "OK", "{result}");
    assert_eq!(result["responses"], json!(["out"]));
    assert_eq!(result["trailing"]["x-trailer"], "done", "{result}");
}

#[test]
fn an_app_killed_mid_stream_gives_the_client_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = GrpcEcho::start(dir.path());
    let sidecar = sidecar(dir.path(), app.addr, None, &[]);
    let inbound = sidecar.inbound;
    // Ten messages 300 ms apart; the app dies after about three.
    let call = std::thread::spawn(move || {
        call(
            inbound,
            "ServerStream",
            &json!({"request": "10:300", "timeout": 20}),
        )
    });
    std::thread::sleep(Duration::from_millis(1_000));
    app.kill();
    let result = call.join().unwrap();
    assert_eq!(code(&result), "UNAVAILABLE", "{result}");
    assert!(
        result["details"].as_str().unwrap().contains("mid-call"),
        "{result}"
    );
    assert_eq!(
        result["trailing"]["bulwark-reason"], "upstream_error",
        "{result}"
    );
}

/// SIGTERM with a gRPC stream in flight: the stream finishes, the HTTP/2 connection gets GOAWAY
/// so the client does not start new calls on it (they go to another replica; here there is
/// none, so the call fails at once instead of being served by a sidecar on its way out), and
/// the sidecar exits as soon as the stream is done, far inside the grace period.
#[test]
fn sigterm_lets_a_grpc_stream_finish_and_sends_goaway() {
    let dir = tempfile::tempdir().unwrap();
    let app = GrpcEcho::start(dir.path());
    let grace = ["--shutdown-grace-seconds", "20"];
    let mut sidecar = sidecar(dir.path(), app.addr, None, &grace);
    let probe = bulwark_e2e::grpc::DrainProbe::start(sidecar.inbound);
    let started = std::time::Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-s", "TERM", &sidecar.process.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(300));
    let result = probe.finish();
    assert_eq!(
        result["stream"],
        json!({"code": "OK", "count": 10}),
        "{result}"
    );
    assert_eq!(result["unary"]["code"], "UNAVAILABLE", "{result}");
    let status = sidecar.process.terminate(Duration::from_secs(25));
    assert!(status.success(), "exited with {status}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM; the stream needed about 3 s"
    );
}

/// A client whose deadline passes cancels its stream: it gets DEADLINE_EXCEEDED from its own
/// library, and the sidecar does not log the cancellation as its error.
#[test]
fn a_client_deadline_cancels_the_call_without_an_error_logged() {
    let dir = tempfile::tempdir().unwrap();
    let app = GrpcEcho::start(dir.path());
    let sidecar = sidecar(dir.path(), app.addr, None, &[]);
    let result = call(
        sidecar.inbound,
        "ServerStream",
        &json!({"request": "5:300", "timeout": 0.5}),
    );
    assert_eq!(code(&result), "DEADLINE_EXCEEDED", "{result}");
    // The next call on a new channel is served as usual.
    let after = call(sidecar.inbound, "Unary", &json!({"request": "after"}));
    assert_eq!(code(&after), "OK", "{after}");
    std::thread::sleep(Duration::from_millis(300));
    let log = sidecar.log_text();
    assert!(!log.contains(" ERROR "), "{log}");
}

/// `curl --http2-prior-knowledge` making one unary gRPC call (an empty message) with `headers`:
/// the response headers (a trailers-only answer carries `grpc-status` in them) and how long it
/// took. curl sends `grpc-timeout` as given; a gRPC library would also cancel at its deadline,
/// which would hide whether the sidecar kept to it.
fn raw_grpc_call(target: SocketAddr, headers: &[&str]) -> (String, Duration) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "--http2-prior-knowledge",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
    ])
    .args([
        "-D",
        "-",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ])
    .args(["--data-binary", "@-"]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    cmd.arg(format!("http://{target}/bulwark.test.Echo/Unary"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().expect("curl runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&[0; 5]).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&output.stdout).to_lowercase(),
        started.elapsed(),
    )
}

/// `grpc-timeout` is the call's deadline at the sidecar: an app that never answers (a TCP
/// listener that reads and stays silent: a gRPC server would enforce the same deadline itself
/// and hide the sidecar's) gets the caller `DEADLINE_EXCEEDED` from the sidecar at the deadline.
#[test]
fn grpc_timeout_is_the_deadline_of_a_call_to_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let sidecar = sidecar(dir.path(), app, None, &[]);
    let (headers, took) = raw_grpc_call(sidecar.inbound, &["grpc-timeout: 300m"]);
    assert!(headers.contains("grpc-status: 4\r\n"), "{headers}");
    assert!(
        headers.contains("bulwark-reason: upstream_timeout"),
        "{headers}"
    );
    assert!(
        took < Duration::from_millis(2_500),
        "answered after {took:?}"
    );
    // Without a deadline the call waits for the app (curl gives up after 3 s).
    let (headers, took) = raw_grpc_call(sidecar.inbound, &[]);
    assert!(headers.is_empty(), "{headers}");
    assert!(took >= Duration::from_secs(3), "answered after {took:?}");
}

/// A FailoverPolicy over two gRPC servers, one answering every call `UNAVAILABLE` (trailers-only,
/// as a server going down does), the app calling through the outbound listener.
fn retry_policy(down: SocketAddr, up: SocketAddr, retry_on: &str) -> String {
    format!(
        "apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {{name: echo, namespace: default}}
spec:
  upstreams:
  - name: echo
    match: {{hosts: [echo]}}
    groups: [{{name: primary, backends: [{{address: '{down}'}}, {{address: '{up}'}}]}}]
    retry: {{retryOn: [{retry_on}], attempts: 2, budgetPercent: 100}}
"
    )
}

/// With `Unavailable` in `retryOn`, the call an `UNAVAILABLE` server answered is retried on the
/// other endpoint although gRPC calls are POSTs; without it, the status reaches the app.
#[test]
fn grpc_statuses_are_retried_by_their_retry_class() {
    let dir = tempfile::tempdir().unwrap();
    let down = GrpcEcho::start_unavailable(dir.path());
    let up = GrpcEcho::start(dir.path());
    let calls = |sidecar: &Sidecar| -> Vec<String> {
        (0..6)
            .map(|i| {
                let spec = json!({"request": format!("r{i}"), "authority": "echo"});
                code(&call(sidecar.outbound, "Unary", &spec)).to_owned()
            })
            .collect()
    };

    let policy = retry_policy(down.addr, up.addr, "Unavailable");
    let retrying = sidecar(
        dir.path().join("a").as_path(),
        "127.0.0.1:9".parse().unwrap(),
        Some(&policy),
        &[],
    );
    assert_eq!(calls(&retrying), vec!["OK"; 6]);
    assert!(
        retrying.metric_sum("bulwark_failover_retries_total") >= 1.0,
        "round robin sent some calls to the unavailable server first"
    );

    let policy = retry_policy(down.addr, up.addr, "Reset");
    let not_retrying = sidecar(
        dir.path().join("b").as_path(),
        "127.0.0.1:9".parse().unwrap(),
        Some(&policy),
        &[],
    );
    let codes = calls(&not_retrying);
    assert!(codes.contains(&"UNAVAILABLE".to_owned()), "{codes:?}");
    assert!(codes.contains(&"OK".to_owned()), "{codes:?}");
}

/// gRPC to an `https` FailoverPolicy upstream: HTTP/2 over TLS, asked for by ALPN (a gRPC
/// server refuses anything else), the certificate verified against the Secret's CA bundle.
#[test]
fn grpc_calls_reach_an_https_upstream_over_http2_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = bulwark_e2e::tls::certificate_for("echo.test");
    let secure = GrpcEcho::start_tls(dir.path(), &cert, &key);
    let policy = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: echo-ca}}
stringData:
  ca.crt: |
    {}
---
apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {{name: echo}}
spec:
  upstreams:
  - name: echo
    match: {{hosts: [echo]}}
    groups: [{{name: only, backends: [{{address: '{}'}}]}}]
    tls: {{sni: echo.test, caSecretRef: {{name: echo-ca, key: ca.crt}}}}
",
        ca.trim_end().replace('\n', "\n    "),
        secure.addr
    );
    let sidecar = sidecar(
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
        Some(&policy),
        &[],
    );
    let unary = call(
        sidecar.outbound,
        "Unary",
        &json!({"request": "over tls", "authority": "echo"}),
    );
    assert_eq!(code(&unary), "OK", "{unary}");
    assert_eq!(unary["responses"], json!(["over tls"]));
    assert_eq!(unary["trailing"]["x-trailer"], "done", "{unary}");
    let stream = call(
        sidecar.outbound,
        "ServerStream",
        &json!({"request": "3", "authority": "echo"}),
    );
    assert_eq!(stream["responses"], json!(["0", "1", "2"]), "{stream}");
}

/// Quotas on gRPC methods: one counting calls, one counting the messages a client streams
/// (`RequestMessages`, charged after each call). Both refuse with `RESOURCE_EXHAUSTED` once used
/// up, the reason in the trailing metadata.
#[test]
fn quotas_count_grpc_calls_and_streamed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let app = GrpcEcho::start(dir.path());
    let policy = "apiVersion: bulwark.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: echo-quotas}
spec:
  quotas:
    - name: unary-calls
      match: {path: {type: Exact, value: /bulwark.test.Echo/Unary}}
      limit: 2
      period: Day
    - name: bidi-messages
      match: {path: {type: Exact, value: /bulwark.test.Echo/BidiStream}}
      unit: RequestMessages
      limit: 5
      period: Day
";
    let sidecar = sidecar(dir.path(), app.addr, Some(policy), &[]);
    let unary: Vec<String> = (0..3)
        .map(|_| code(&call(sidecar.inbound, "Unary", &json!({"request": "q"}))).to_owned())
        .collect();
    assert_eq!(unary, ["OK", "OK", "RESOURCE_EXHAUSTED"]);

    let bidi = |messages: &[&str]| {
        call(
            sidecar.inbound,
            "BidiStream",
            &json!({"messages": messages}),
        )
    };
    // 4 messages of 5: admitted, then charged 4; 3 more: admitted (4 < 5), charged to 7.
    let first = bidi(&["a", "b", "c", "d"]);
    assert_eq!(first["responses"], json!(["a", "b", "c", "d"]), "{first}");
    let second = bidi(&["e", "f", "g"]);
    assert_eq!(code(&second), "OK", "{second}");
    let refused = bidi(&["h"]);
    assert_eq!(code(&refused), "RESOURCE_EXHAUSTED", "{refused}");
    assert_eq!(
        refused["trailing"]["bulwark-reason"], "quota_exhausted",
        "{refused}"
    );
    let exhausted = refused["trailing"]["bulwark-quota-exhausted"]
        .as_str()
        .unwrap_or_default();
    assert!(
        exhausted.contains("\"bidi-messages\";limit=5;used=7"),
        "{refused}"
    );
}
