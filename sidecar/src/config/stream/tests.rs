use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bulwark_api::distribution::{Ack, StreamMessage, etag};
use bytes::Bytes;
use futures::channel::mpsc as body_channel;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::{mpsc, watch};

use super::{testing::*, *};
use crate::{
    config::{Installer, files, persist},
    metrics::Metrics,
};
use bulwark_policy::runtime::Runtime;

/// A local runtime (no Redis) and its installer, keeping the last good snapshot in `state_dir`.
fn installer(metrics: &Arc<Metrics>, state_dir: &std::path::Path) -> Arc<Installer> {
    Arc::new(Installer {
        runtime: Arc::new(Runtime::local(metrics.policy.clone())),
        state_dir: state_dir.to_owned(),
        metrics: metrics.clone(),
    })
}

#[test]
fn the_token_is_read_anew_each_time_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let e = read_token(&path).unwrap_err();
    assert!(
        e.starts_with(&format!("--token-file {}:", path.display())),
        "{e}"
    );
    std::fs::write(&path, "first\n").unwrap();
    assert_eq!(read_token(&path).unwrap(), "first");
    std::fs::write(&path, "second").unwrap();
    assert_eq!(read_token(&path).unwrap(), "second");
    std::fs::write(&path, " \n").unwrap();
    assert!(read_token(&path).unwrap_err().contains("empty"));
    std::fs::write(&path, "bad\ntoken").unwrap();
    assert!(bearer(&read_token(&path).unwrap()).is_err());
}

#[test]
fn ca_flags_are_checked_and_named() {
    let e = load_ca(None, None).unwrap_err();
    assert!(
        e.contains("--operator-ca") && e.contains("--operator-ca-file"),
        "{e}"
    );
    let e = load_ca(Some("x"), Some(Path::new("/x"))).unwrap_err();
    assert!(e.contains("not both"), "{e}");
    let e = load_ca(Some("not a certificate"), None).unwrap_err();
    assert!(e.starts_with("--operator-ca: no PEM certificate"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("ca.pem");
    let e = load_ca(None, Some(&missing)).unwrap_err();
    assert!(
        e.starts_with(&format!("--operator-ca-file {}:", missing.display())),
        "{e}"
    );
    std::fs::write(&missing, "garbage").unwrap();
    let e = load_ca(None, Some(&missing)).unwrap_err();
    assert!(e.contains("no PEM certificate"), "{e}");
    std::fs::write(&missing, pki(&["localhost"]).ca_pem).unwrap();
    load_ca(None, Some(&missing)).unwrap();
}

const VALID: &str = include_str!("../../../../examples/ratelimitpolicy-per-client-ip.yaml");
/// `scope: Global`, refused by a sidecar without Redis.
const GLOBAL: &str = include_str!("../../../../examples/ratelimitpolicy-per-api-key.yaml");

fn snapshot(yaml: &str, version: u64) -> Snapshot {
    let mut loaded = files::Loaded::new();
    files::load_text("test.yaml", yaml, &mut loaded).unwrap();
    Snapshot {
        version,
        ..loaded.snapshot
    }
}

fn line(snapshot: &Snapshot) -> String {
    let message = StreamMessage::Snapshot {
        etag: etag(snapshot),
        snapshot: Box::new(snapshot.clone()),
    };
    serde_json::to_string(&message).unwrap() + "\n"
}

type Frames = body_channel::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

/// One watch request as the server saw it; `body` feeds the stream when it was answered 200.
struct Watch {
    auth: Option<String>,
    if_none_match: Option<String>,
    body: Option<Frames>,
}

struct Operator {
    watches: mpsc::UnboundedReceiver<Watch>,
    acks: mpsc::UnboundedReceiver<(Option<String>, Ack)>,
    /// The status the next watch requests get.
    status: Arc<Mutex<StatusCode>>,
    /// The status acknowledgements get.
    ack_status: Arc<Mutex<StatusCode>>,
    addr: std::net::SocketAddr,
    ca_pem: String,
}

async fn operator() -> Operator {
    let pki = pki(&["127.0.0.1"]);
    let (watch_tx, watches) = mpsc::unbounded_channel();
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(StatusCode::OK));
    let answer = status.clone();
    let ack_status = Arc::new(Mutex::new(StatusCode::NO_CONTENT));
    let ack_answer = ack_status.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let (watch_tx, ack_tx, status) =
            (watch_tx.clone(), ack_tx.clone(), *answer.lock().unwrap());
        let ack_status = *ack_answer.lock().unwrap();
        Box::pin(async move {
            let header = |name| {
                req.headers()
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
            };
            let auth = header(header::AUTHORIZATION);
            if req.method() == Method::POST && req.uri().path() == ACK_PATH {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                ack_tx
                    .send((auth, serde_json::from_slice(&body).unwrap()))
                    .unwrap();
                let mut response = Response::new(full(""));
                *response.status_mut() = ack_status;
                return response;
            }
            assert_eq!(req.uri().path(), WATCH_PATH);
            let if_none_match = header(header::IF_NONE_MATCH);
            if status != StatusCode::OK {
                let _ = watch_tx.send(Watch {
                    auth,
                    if_none_match,
                    body: None,
                });
                let mut response = Response::new(full("token audience is not bulwark\n"));
                *response.status_mut() = status;
                return response;
            }
            let (frames, rx) = body_channel::unbounded();
            let _ = watch_tx.send(Watch {
                auth,
                if_none_match,
                body: Some(frames),
            });
            Response::new(StreamBody::new(rx).boxed())
        })
    });
    let (addr, _task) = serve(&pki, &[b"h2"], handler).await;
    Operator {
        ack_status,
        watches,
        acks,
        status,
        addr,
        ca_pem: pki.ca_pem,
    }
}

fn send(frames: &Frames, bytes: &[u8]) {
    frames
        .unbounded_send(Ok(Frame::data(Bytes::copy_from_slice(bytes))))
        .unwrap();
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("in time")
        .expect("open")
}

async fn eventually(condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 2s");
}

fn reloads(metrics: &Metrics, result: &str) -> u64 {
    metrics.config_reloads.with_label_values(&[result]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_acks_rejects_and_resumes_from_its_etag() {
    let mut op = operator().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "expired-token\n").unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    metrics.enable_operator_stream().unwrap();
    let sink = installer(&metrics, dir.path());
    let policy = sink.runtime.clone();
    let stream = Arc::new(
        OperatorStream::new(
            Target::parse(&format!("https://{}", op.addr), None).unwrap(),
            load_ca(Some(&op.ca_pem), None).unwrap(),
            token.clone(),
            sink.clone(),
        )
        .with_timing(
            Duration::from_millis(10),
            Duration::from_millis(50),
            Duration::from_millis(1000),
        ),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn({
        let stream = stream.clone();
        async move { stream.start(shutdown_rx).await }
    });

    // Refused: retried with backoff, the token read again each time.
    *op.status.lock().unwrap() = StatusCode::UNAUTHORIZED;
    let first = next(&mut op.watches).await;
    assert_eq!(first.auth.as_deref(), Some("Bearer expired-token"));
    assert_eq!(first.if_none_match, None);
    let _ = next(&mut op.watches).await;
    assert!(!policy.is_ready());
    std::fs::write(&token, "fresh-token").unwrap();
    *op.status.lock().unwrap() = StatusCode::OK;
    let watch = loop {
        let watch = next(&mut op.watches).await;
        if watch.body.is_some() {
            break watch;
        }
    };
    assert_eq!(watch.auth.as_deref(), Some("Bearer fresh-token"));
    // The second watch may already have been answered 200: the fake operator reads the status
    // after it reports the watch, and the test sets OK right then. The first was refused.
    assert!(
        metrics
            .stream
            .connects
            .with_label_values(&["failure"])
            .get()
            >= 1
    );
    let frames = watch.body.unwrap();

    // A snapshot split across frames, then joined with a heartbeat.
    let good = snapshot(VALID, 7);
    let text = line(&good);
    let (a, b) = text.as_bytes().split_at(text.len() / 2);
    send(&frames, a);
    send(
        &frames,
        &[b, b"{\"type\":\"heartbeat\"}\n".as_slice()].concat(),
    );
    let (auth, ack) = next(&mut op.acks).await;
    assert_eq!(auth.as_deref(), Some("Bearer fresh-token"));
    assert_eq!(
        ack,
        Ack {
            etag: etag(&good),
            accepted: true,
            error: None,
            webhooks: None,
        }
    );
    assert!(policy.is_ready());
    assert_eq!(policy.policy().snapshot, good);
    assert_eq!(persist::load(dir.path()).unwrap(), Some(good.clone()));
    assert_eq!(metrics.policy.snapshot_version.get(), 7);
    assert_eq!(metrics.stream.connected.get(), 1);
    assert_eq!(
        metrics
            .stream
            .connects
            .with_label_values(&["success"])
            .get(),
        1
    );
    assert!(metrics.stream.last_message_timestamp_seconds.get() > 1e9);
    assert_eq!(reloads(&metrics, "success"), 1);

    // Lines that are not JSON, or of a message type this sidecar does not know, are skipped.
    send(&frames, b"garbage\n{\"type\":\"future\"}\n");
    // A snapshot that does not compile: rejected, acknowledged as such, the good one stays.
    let bad = snapshot(GLOBAL, 8);
    send(&frames, line(&bad).as_bytes());
    let (_, ack) = next(&mut op.acks).await;
    assert_eq!(ack.etag, etag(&bad));
    assert!(!ack.accepted);
    assert!(
        ack.error.as_deref().unwrap().contains("RateLimitPolicy"),
        "{ack:?}"
    );
    assert_eq!(policy.policy().snapshot, good);
    assert_eq!(reloads(&metrics, "failure"), 1);
    // A snapshot that does not parse is rejected too, by its etag.
    send(
        &frames,
        b"{\"type\":\"snapshot\",\"etag\":\"00000000000000aa\",\"snapshot\":{}}\n",
    );
    let (_, ack) = next(&mut op.acks).await;
    assert_eq!(ack.etag, "00000000000000aa");
    assert!(
        ack.error.as_deref().unwrap().contains("does not parse"),
        "{ack:?}"
    );
    assert_eq!(reloads(&metrics, "failure"), 2);
    // The operator ends the stream: the sidecar reconnects, says what it has, and posts its
    // last acknowledgement again (the replica now serving it may not have it).
    drop(frames);
    let watch = next(&mut op.watches).await;
    assert_eq!(watch.if_none_match, Some(etag(&good)));
    let (_, again) = next(&mut op.acks).await;
    assert_eq!(
        (again.etag.as_str(), again.accepted),
        ("00000000000000aa", false)
    );
    let frames = watch.body.unwrap();
    send(&frames, b"{\"type\":\"heartbeat\"}\n");

    // A stream that goes silent is dead: the sidecar reconnects on its own.
    let watch = next(&mut op.watches).await;
    assert_eq!(watch.if_none_match, Some(etag(&good)));
    let (_, again) = next(&mut op.acks).await;
    assert_eq!(again.etag, "00000000000000aa");
    // Its answer may still be on its way.
    eventually(|| {
        metrics
            .stream
            .acks
            .with_label_values(&["false", "delivered"])
            .get()
            == 4
    })
    .await;
    assert_eq!(
        policy.policy().snapshot,
        good,
        "the last good policy keeps serving"
    );
    assert_eq!(
        metrics
            .stream
            .acks
            .with_label_values(&["true", "delivered"])
            .get(),
        1
    );

    // A snapshot of another schema (an operator of another version) is refused, naming both.
    let old = Snapshot {
        schema: SCHEMA - 1,
        ..snapshot(VALID, 9)
    };
    send(watch.body.as_ref().unwrap(), line(&old).as_bytes());
    let (_, ack) = next(&mut op.acks).await;
    assert!(!ack.accepted);
    let error = ack.error.unwrap();
    assert!(
        error.contains(&format!("schema {}", SCHEMA - 1)) && error.contains(&SCHEMA.to_string()),
        "{error}"
    );
    assert_eq!(policy.policy().snapshot, good);
    assert_eq!(reloads(&metrics, "failure"), 3);

    // An acknowledgement the operator did not take is posted again after the next connect
    // (the current etag means the operator itself sends nothing to answer).
    let mut newer = good.clone();
    newer.pod = Some(bulwark_api::snapshot::ObjectRef {
        namespace: "shop".into(),
        name: "api-0".into(),
    });
    *op.ack_status.lock().unwrap() = StatusCode::SERVICE_UNAVAILABLE;
    send(watch.body.as_ref().unwrap(), line(&newer).as_bytes());
    let (_, ack) = next(&mut op.acks).await;
    assert_eq!(
        (ack.etag.as_str(), ack.accepted),
        (etag(&newer).as_str(), true)
    );
    *op.ack_status.lock().unwrap() = StatusCode::NO_CONTENT;
    drop(watch);
    let watch = next(&mut op.watches).await;
    assert_eq!(watch.if_none_match, Some(etag(&newer)));
    let (_, again) = next(&mut op.acks).await;
    assert_eq!(again, ack);
    assert_eq!(
        metrics
            .stream
            .acks
            .with_label_values(&["true", "failed"])
            .get(),
        1
    );
    // The operator had the ack before the sidecar has the answer.
    eventually(|| {
        metrics
            .stream
            .acks
            .with_label_values(&["true", "delivered"])
            .get()
            == 2
    })
    .await;
    let frames = watch.body.unwrap();

    // Shutdown ends the task promptly, connection open or not.
    shutdown_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.stream.connected.get(), 0);
    drop(frames);

    // A restarted sidecar starts from the saved snapshot and asks only for something newer.
    let restarted = installer(&Arc::new(Metrics::new().unwrap()), dir.path());
    let saved = persist::load(dir.path()).unwrap().unwrap();
    assert_eq!(saved, newer);
    let runtime = &restarted.runtime;
    runtime.install(runtime.compile(saved).unwrap());
    let stream = OperatorStream::new(
        Target::parse(&format!("https://{}", op.addr), None).unwrap(),
        load_ca(Some(&op.ca_pem), None).unwrap(),
        token,
        restarted,
    );
    assert_eq!(stream.current_etag(), Some(etag(&newer)));
}

#[tokio::test]
async fn an_unreachable_operator_is_retried_and_shutdown_is_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    // A port nothing listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let stream = Arc::new(
        OperatorStream::new(
            Target::parse(&format!("https://{addr}"), None).unwrap(),
            load_ca(Some(&pki(&["127.0.0.1"]).ca_pem), None).unwrap(),
            token,
            installer(&metrics, dir.path()),
        )
        .with_timing(
            Duration::from_millis(20),
            Duration::from_millis(40),
            DEAD_AFTER,
        ),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn({
        let stream = stream.clone();
        async move { stream.start(shutdown_rx).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = metrics
        .stream
        .connects
        .with_label_values(&["failure"])
        .get();
    // Backoff of 20 to 40 ms: several attempts, but no tight loop.
    assert!((3..=30).contains(&failures), "{failures}");
    shutdown_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
}
