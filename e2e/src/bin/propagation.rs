//! Propagation benchmark: time from a policy write to the apiserver until every stream client
//! holds the new generation, with 1, 50 and 200 clients and 1,000 policies in the cluster; the
//! operator's RSS and CPU at that scale; the time from an EndpointSlice write until the clients
//! whose pods use that Service (a FailoverPolicy names it) hold the new endpoint, and what the
//! other clients receive meanwhile (nothing, if only the Service's users are recompiled); and
//! the time to converge after an operator restart.
//!
//! The clients speak the sidecar's protocol with the sidecar's own connection code (TLS with
//! the operator's CA, HTTP/2, NDJSON lines, acknowledgements), each with a token bound to its
//! own pod, so the operator does for them exactly what it does for sidecars. Run by
//! `bench/propagation.sh` (which starts the control plane); prints a Markdown table.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use bulwark_api::{
    crd::{FailoverPolicy, RateLimitPolicy},
    distribution::{ACK_PATH, Ack, StreamMessage, WATCH_PATH},
};
use bulwark_e2e::{
    operator::OperatorPorts,
    process::{Running, http_get},
};
use bulwark_sidecar::config::stream::{
    connect::{Target, connect, tls_config},
    lines::LineSplitter,
};
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, Pod, Secret, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::sync::mpsc;

const BENCH_NS: &str = "bench-propagation";
const OPERATOR_NS: &str = "bulwark-system";
const TARGET: &str = "target";
/// The Service of the EndpointSlice row, named by a FailoverPolicy that selects one pod in
/// [`USERS_EVERY`] (label `calls: payments`; the others have `calls: none`).
const SERVICE: &str = "payments";
const USERS_EVERY: usize = 4;

/// What one stream client received: a snapshot, with the TARGET policy's generation and the
/// addresses of SERVICE's endpoints in it.
struct Seen {
    client: usize,
    generation: i64,
    endpoints: Vec<String>,
    at: Instant,
}

struct Args {
    kubeconfig: PathBuf,
    operator: PathBuf,
    log_dir: PathBuf,
    clients: Vec<usize>,
    policies: usize,
    edits: usize,
}

fn args() -> Args {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(k.trim_start_matches("--").to_string(), v);
    }
    let get = |k: &str| {
        map.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("--{k} is required"))
    };
    Args {
        kubeconfig: get("kubeconfig").into(),
        operator: get("operator").into(),
        log_dir: get("log-dir").into(),
        clients: get("clients")
            .split(',')
            .map(|n| n.parse().unwrap())
            .collect(),
        policies: get("policies").parse().unwrap(),
        edits: get("edits").parse().unwrap(),
    }
}

fn policy(namespace: &str, name: &str, app: &str, limit: u32) -> RateLimitPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bulwark.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "rules": [{"name": "r", "key": [{"type": "ClientIP"}],
                       "rates": [{"limit": limit, "window": "1s"}]}]
        }
    }))
    .unwrap()
}

async fn ensure_namespace(client: &Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

/// 1,000 policies: most in other namespaces (they cost index memory and list time), a few
/// selecting the benchmark's pods (they are in every snapshot).
async fn create_policies(client: &Client, total: usize) {
    let selecting = 5.min(total);
    let mut specs = vec![];
    for i in 0..selecting {
        let name = if i == 0 {
            TARGET.to_string()
        } else {
            format!("api-{i}")
        };
        specs.push((BENCH_NS.to_string(), name, "api"));
    }
    for i in selecting..total {
        specs.push((
            format!("bench-fill-{}", i % 50),
            format!("fill-{i}"),
            "other",
        ));
    }
    for n in 0..50.min(total) {
        ensure_namespace(client, &format!("bench-fill-{n}")).await;
    }
    futures::stream::iter(specs)
        .for_each_concurrent(8, |(ns, name, app)| {
            let client = client.clone();
            async move {
                let api: Api<RateLimitPolicy> = Api::namespaced(client, &ns);
                let p = policy(&ns, &name, app, 100);
                let params = PatchParams::apply("bench").force();
                api.patch(&name, &params, &Patch::Apply(&p)).await.unwrap();
            }
        })
        .await;
}

/// `n` injected pods (created directly with the injection label: the webhook is not what is
/// measured) and a token bound to each.
async fn pods_and_tokens(client: &Client, n: usize) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), BENCH_NS);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), BENCH_NS);
    for _ in 0..100 {
        if sas.get_opt("default").await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    futures::stream::iter(0..n)
        .map(|i| {
            let (pods, sas) = (pods.clone(), sas.clone());
            async move {
                let name = format!("api-{i}");
                let calls = if i % USERS_EVERY == 0 {
                    SERVICE
                } else {
                    "none"
                };
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {
                        "app": "api", "calls": calls, "bulwark.dev/injected": "true"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
                }))
                .unwrap();
                let pod = match pods.create(&PostParams::default(), &pod).await {
                    Ok(p) => p,
                    Err(kube::Error::Api(e)) if e.code == 409 => pods.get(&name).await.unwrap(),
                    Err(e) => panic!("{e}"),
                };
                let request = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec!["bulwark".into()],
                        bound_object_ref: Some(BoundObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            name: Some(name.clone()),
                            uid: pod.metadata.uid.clone(),
                        }),
                        expiration_seconds: Some(3600),
                    },
                    ..TokenRequest::default()
                };
                sas.create_token_request("default", &PostParams::default(), &request)
                    .await
                    .unwrap()
                    .status
                    .unwrap()
                    .token
            }
        })
        .buffered(8)
        .collect()
        .await
}

/// One stream client: reconnects until aborted; reports every snapshot it receives.
async fn client_loop(
    id: usize,
    target: Arc<Target>,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let service = format!("{BENCH_NS}/{SERVICE}:80");
    let mut etag: Option<String> = None;
    loop {
        let Ok(mut conn) = connect(&target, &tls, Duration::from_secs(5)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut req = Request::get(target.uri(WATCH_PATH))
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(tag) = &etag {
            req = req.header(header::IF_NONE_MATCH, tag.as_str());
        }
        let Ok(resp) = conn
            .send
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
        else {
            continue;
        };
        if !resp.status().is_success() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut body = resp.into_body();
        let mut lines = LineSplitter::new(16 << 20);
        while let Some(Ok(frame)) = body.frame().await {
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for line in lines.push(data).unwrap() {
                let Ok(StreamMessage::Snapshot {
                    etag: tag,
                    snapshot,
                }) = serde_json::from_slice(&line)
                else {
                    continue;
                };
                let at = Instant::now();
                let generation = snapshot
                    .rate_limits
                    .iter()
                    .find(|p| p.source.name == TARGET)
                    .map_or(0, |p| p.source.generation);
                let endpoints = snapshot
                    .endpoints
                    .get(&service)
                    .map(|e| e.iter().map(|e| e.address.clone()).collect())
                    .unwrap_or_default();
                let _ = seen.send(Seen {
                    client: id,
                    generation,
                    endpoints,
                    at,
                });
                let ack = serde_json::to_vec(&Ack {
                    etag: tag.clone(),
                    accepted: true,
                    error: None,
                    webhooks: None,
                })
                .unwrap();
                let req = Request::post(target.uri(ACK_PATH))
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(ack)))
                    .unwrap();
                let mut send = conn.send.clone();
                tokio::spawn(async move {
                    let _ = send.send_request(req).await;
                });
                etag = Some(tag);
            }
        }
    }
}

/// Collects reports until every client in `clients` has reached `generation`; returns each
/// client's latency from `since`.
async fn wait_all(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    clients: usize,
    generation: i64,
    since: Instant,
    state: &mut [i64],
) -> Vec<Duration> {
    let mut latencies = vec![None; clients];
    for (i, g) in state.iter().enumerate() {
        if *g >= generation {
            latencies[i] = Some(Duration::ZERO);
        }
    }
    while latencies.iter().any(Option::is_none) {
        let Seen {
            client: id,
            generation: g,
            at,
            ..
        } = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("clients stopped receiving for 60 s")
            .unwrap();
        state[id] = state[id].max(g);
        if g >= generation && latencies[id].is_none() {
            latencies[id] = Some(at.saturating_duration_since(since));
        }
    }
    latencies.into_iter().map(Option::unwrap).collect()
}

/// Collects reports until every client in `users` holds an endpoint `address` of SERVICE;
/// returns their latencies from `since`. Every report counts in `received`, per client.
async fn wait_endpoint(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    users: &[usize],
    address: &str,
    since: Instant,
    received: &mut [usize],
) -> Vec<Duration> {
    let mut latencies: BTreeMap<usize, Duration> = BTreeMap::new();
    while latencies.len() < users.len() {
        let seen = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("clients stopped receiving for 60 s")
            .unwrap();
        received[seen.client] += 1;
        if users.contains(&seen.client) && seen.endpoints.iter().any(|e| e == address) {
            latencies
                .entry(seen.client)
                .or_insert(seen.at.saturating_duration_since(since));
        }
    }
    latencies.into_values().collect()
}

/// Counts what arrives within `quiet` of silence (at most 10 s), per client.
async fn drain(rx: &mut mpsc::UnboundedReceiver<Seen>, quiet: Duration, received: &mut [usize]) {
    let until = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(seen)) = tokio::time::timeout(quiet, rx.recv()).await {
        received[seen.client] += 1;
        if Instant::now() > until {
            break;
        }
    }
}

/// One counter of the operator's `/metrics`.
async fn operator_counter(admin: std::net::SocketAddr, name: &str) -> u64 {
    let name = format!("{name} ");
    tokio::task::spawn_blocking(move || {
        let body = http_get(admin, "/metrics").expect("operator /metrics").body;
        body.lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name}in /metrics")) as u64
    })
    .await
    .unwrap()
}

/// SERVICE (no selector: its EndpointSlice is the benchmark's to write) and the FailoverPolicy
/// that names it, selecting the pods labelled `calls: payments`.
async fn create_failover(client: &Client) {
    let params = PatchParams::apply("bench").force();
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": BENCH_NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), BENCH_NS)
        .patch(SERVICE, &params, &Patch::Apply(&service))
        .await
        .unwrap();
    patch_slice(client, 0).await;
    let policy: FailoverPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "FailoverPolicy",
        "metadata": {"name": SERVICE, "namespace": BENCH_NS},
        "spec": {
            "selector": {"matchLabels": {"calls": SERVICE}},
            "upstreams": [{"name": SERVICE, "match": {"hosts": [SERVICE]},
                           "groups": [{"name": "primary",
                                       "backends": [{"service": {"name": SERVICE, "port": 80}}]}]}]
        }
    }))
    .unwrap();
    Api::<FailoverPolicy>::namespaced(client.clone(), BENCH_NS)
        .patch(SERVICE, &params, &Patch::Apply(&policy))
        .await
        .unwrap();
}

/// The address of SERVICE's changing endpoint at edit `k`.
fn endpoint_address(k: usize) -> String {
    format!("10.78.{}.{}", k / 256, k % 256)
}

/// SERVICE's one EndpointSlice: a steady endpoint, and one replaced at each edit (a pod of the
/// Service rescheduled).
async fn patch_slice(client: &Client, k: usize) {
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{SERVICE}-1"), "namespace": BENCH_NS,
                     "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.77.0.1"], "conditions": {"ready": true},
             "zone": "zone-a", "nodeName": "node-1"},
            {"addresses": [endpoint_address(k)], "conditions": {"ready": true},
             "zone": "zone-b", "nodeName": "node-2"}
        ]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), BENCH_NS)
        .patch(
            &format!("{SERVICE}-1"),
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&slice),
        )
        .await
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// (RSS bytes, CPU seconds) of a process.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    (rss_kib * 1024, ticks / 100.0)
}

fn start_operator(args: &Args, ports: OperatorPorts, run: usize) -> Running {
    let mut cmd = Command::new(&args.operator);
    cmd.arg("--kubeconfig")
        .arg(&args.kubeconfig)
        .args(["--namespace", OPERATOR_NS, "--pod-name", "bench"])
        .args(["--admin-listen", &ports.admin.to_string()])
        .args(["--webhook-listen", &ports.webhook.to_string()])
        .args(["--distribution-listen", &ports.distribution.to_string()])
        .args(["--tls-extra-sans", "127.0.0.1"])
        .env("RUST_LOG", "warn");
    Running::spawn(
        "bulwark-operator",
        cmd,
        &args.log_dir.join(format!("operator-{run}.log")),
    )
}

async fn patch_target(client: &Client, limit: u32) -> i64 {
    let api: Api<RateLimitPolicy> = Api::namespaced(client.clone(), BENCH_NS);
    let p = policy(BENCH_NS, TARGET, "api", limit);
    let params = PatchParams::apply("bench").force();
    api.patch(TARGET, &params, &Patch::Apply(&p))
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap()
}

#[tokio::main]
async fn main() {
    let args = args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let max_clients = *args.clients.iter().max().unwrap();

    ensure_namespace(&client, OPERATOR_NS).await;
    ensure_namespace(&client, BENCH_NS).await;
    let t = Instant::now();
    create_policies(&client, args.policies).await;
    eprintln!("{} policies created in {:?}", args.policies, t.elapsed());
    let tokens = pods_and_tokens(&client, max_clients).await;
    eprintln!("{max_clients} pods and tokens ready");

    let ports = OperatorPorts::free();
    let mut operator = start_operator(&args, ports, 0);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NS);
    let ca = loop {
        if let Some(s) = secrets.get_opt("bulwark-operator-tls").await.unwrap()
            && let Some(ca) = s.data.and_then(|d| d.get("ca.crt").cloned())
        {
            break ca.0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tls = tls_config(&ca, "bench").unwrap();
    let target = Arc::new(Target::parse(&format!("https://{}", ports.distribution), None).unwrap());

    println!(
        "| stream clients | policies | edits | p50 (ms) | p99 (ms) | max (ms) | operator RSS (MiB) | operator CPU (% of one core) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut limit = 1000;
    let mut restart_clients = None;
    for &n in &args.clients {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tasks: Vec<_> = tokens[..n]
            .iter()
            .enumerate()
            .map(|(i, token)| {
                tokio::spawn(client_loop(
                    i,
                    target.clone(),
                    tls.clone(),
                    token.clone(),
                    tx.clone(),
                ))
            })
            .collect();
        let mut state = vec![-1; n];
        wait_all(&mut rx, n, 0, Instant::now(), &mut state).await;
        let (_, cpu_before) = usage(operator.pid());
        let started = Instant::now();
        let mut all = Vec::new();
        for _ in 0..args.edits {
            limit += 1;
            let since = Instant::now();
            let generation = patch_target(&client, limit).await;
            all.extend(wait_all(&mut rx, n, generation, since, &mut state).await);
            // Edits spaced out, as people make them; each is measured on its own.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (rss, cpu_after) = usage(operator.pid());
        let cpu = (cpu_after - cpu_before) / started.elapsed().as_secs_f64() * 100.0;
        all.sort();
        println!(
            "| {n} | {} | {} | {} | {} | {} | {:.1} | {:.0} |",
            args.policies,
            args.edits,
            ms(percentile(&all, 0.50)),
            ms(percentile(&all, 0.99)),
            ms(*all.last().unwrap()),
            rss as f64 / (1024.0 * 1024.0),
            cpu
        );
        if n == max_clients {
            restart_clients = Some((tasks, rx, state));
        } else {
            tasks.iter().for_each(|t| t.abort());
        }
    }

    let (tasks, mut rx, mut state) = restart_clients.unwrap();

    // EndpointSlice edits: only the clients whose pods use the Service should hear of them.
    let users: Vec<usize> = (0..max_clients).step_by(USERS_EVERY).collect();
    let mut received = vec![0; max_clients];
    create_failover(&client).await;
    let since = Instant::now();
    wait_endpoint(
        &mut rx,
        &users,
        &format!("{}:8080", endpoint_address(0)),
        since,
        &mut received,
    )
    .await;
    drain(&mut rx, Duration::from_secs(1), &mut received).await;
    let mut received = vec![0; max_clients];
    let compiled_before =
        operator_counter(ports.admin, "bulwark_operator_snapshots_compiled_total").await;
    let mut all = Vec::new();
    for k in 1..=args.edits {
        let since = Instant::now();
        patch_slice(&client, k).await;
        let address = format!("{}:8080", endpoint_address(k));
        all.extend(wait_endpoint(&mut rx, &users, &address, since, &mut received).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything still on its way to a client that should get nothing.
    drain(&mut rx, Duration::from_secs(2), &mut received).await;
    let compiled = operator_counter(ports.admin, "bulwark_operator_snapshots_compiled_total").await
        - compiled_before;
    all.sort();
    let to_users: usize = users.iter().map(|&u| received[u]).sum();
    let to_others: usize = received.iter().sum::<usize>() - to_users;
    let others = max_clients - users.len();
    println!();
    println!(
        "| stream clients | clients whose pods use the Service | policies | EndpointSlice edits | p50 (ms) | p99 (ms) | max (ms) | snapshots received by users | snapshots received by the other clients | pod snapshots compiled per edit |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {max_clients} | {} | {} + 1 FailoverPolicy | {} | {} | {} | {} | {to_users} | {to_others} (of {others} clients) | {:.1} |",
        users.len(),
        args.policies,
        args.edits,
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().unwrap()),
        compiled as f64 / args.edits as f64,
    );

    // Restart: the operator dies, a policy changes meanwhile, the operator starts again.
    operator.kill();
    limit += 1;
    let generation = patch_target(&client, limit).await;
    let since = Instant::now();
    let _operator = start_operator(&args, ports, 1);
    let mut converge = wait_all(&mut rx, max_clients, generation, since, &mut state).await;
    converge.sort();
    println!();
    println!(
        "Operator restart with {max_clients} clients connected and a policy changed while it was down: \
         every client holds the change {} ms after the new process starts (p50 {} ms).",
        ms(*converge.last().unwrap()),
        ms(percentile(&converge, 0.5))
    );
    tasks.iter().for_each(|t| t.abort());
}
