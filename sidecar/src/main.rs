//! `bulwark-sidecar`: the Pingora proxy that sits beside an app and enforces Bulwark policy.
//!
//! Listeners: `inbound` (clients → sidecar → app on localhost), `outbound` (loopback: the app's
//! calls to other services) and `admin` (loopback: health, readiness, metrics, config). Policy comes from the last good snapshot on disk, then from the
//! configured source (standalone: `--config-dir`; in Kubernetes: the operator stream,
//! `--operator-url`).
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::{sync::Arc, time::Duration};

use bulwark_sidecar::{
    admin, cli,
    config::{persist, stream::OperatorStream, watch::ConfigWatcher},
    global::GlobalStore,
    metrics::Metrics,
    outbound,
    policy::{ActivePolicy, CompiledPolicy, PolicyEnv, SnapshotRedis},
    proxy,
    quota::{flush::QuotaFlusher, store::FILE_NAME as QUOTA_FILE, usage::UsageStore},
    ratelimit::{
        global::FastSync,
        store::LocalStore,
        sweeper::{FastSyncer, Sweeper},
    },
};
use clap::Parser;
use pingora::{
    server::{Server, configuration::Opt},
    services::{background::background_service, listening::Service},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Shards of the local counter store: enough that two cores rarely contend on one lock.
const STORE_SHARDS: usize = 64;

fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // Flag errors (an unreadable CA, a bad URL) stop the sidecar before it serves anything.
    let operator = args.operator_source()?;
    let conf = args.server_conf()?;
    let mut server = Server::new_with_opt_and_conf(
        Opt {
            upgrade: args.upgrade,
            ..Opt::default()
        },
        conf,
    );
    server.bootstrap();

    let metrics = Arc::new(Metrics::new()?);
    // Redis connections are set up on their own small runtime, so their background tasks
    // (the Cluster connection, the connection manager's watcher) outlive any one listener's
    // runtime. A single node's multiplexed connection is driven by the runtime that first uses
    // it, in practice the inbound one: no cross-thread hop per call (BENCHMARKS.md).
    let redis_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bulwark-redis")
        .enable_all()
        .build()?;
    let global = match args.redis_target() {
        Some(target) => {
            let _entered = redis_runtime.enter();
            Some(GlobalStore::connect(target, &metrics)?)
        }
        None => None,
    };
    // Fast-mode global syncs: with the flags' Redis, or one a snapshot names later.
    let fast = Arc::new(FastSync::new(global.clone()));
    let env = Arc::new(PolicyEnv {
        metrics: metrics.clone(),
        global,
        from_snapshot: Some(SnapshotRedis::new(
            redis_runtime.handle().clone(),
            fast.clone(),
        )),
    });
    // Without a policy source there is nothing to wait for: pass-through is the intended state.
    let policy = Arc::new(ActivePolicy::new(
        args.config_dir.is_none() && operator.is_none(),
    ));

    // The last good snapshot first, so a restarted sidecar enforces before any source answers.
    match persist::load(&args.state_dir) {
        Ok(Some(snapshot)) => match CompiledPolicy::compile(snapshot, &env) {
            Ok(compiled) => {
                tracing::info!(
                    version = compiled.snapshot.version,
                    "enforcing the last good snapshot from disk"
                );
                policy.install(compiled, &metrics);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the saved snapshot cannot be compiled; ignoring it")
            }
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the saved snapshot; ignoring it"),
    }

    if let Some(dir) = &args.config_dir {
        let watcher = ConfigWatcher {
            dir: dir.clone(),
            state_dir: args.state_dir.clone(),
            interval: Duration::from_millis(args.config_poll_ms.max(50)),
            policy: policy.clone(),
            env: env.clone(),
        };
        // Load once before serving; on failure the saved snapshot (if any) keeps serving and
        // /readyz says the sidecar still waits for a valid policy.
        let _ = watcher.reload();
        server.add_service(background_service("bulwark config watcher", watcher));
    }

    if let Some((target, tls)) = operator {
        metrics.enable_operator_stream()?;
        // Created after the saved snapshot is installed: its etag goes in the first
        // If-None-Match. Until a snapshot is installed, /readyz says the sidecar waits.
        let stream = OperatorStream::new(
            target,
            tls,
            args.token_file.clone(),
            args.state_dir.clone(),
            policy.clone(),
            env.clone(),
        );
        server.add_service(background_service("bulwark operator stream", stream));
    }

    // Local quota usage: loaded from disk before serving, flushed in the background.
    let quota_usage = Arc::new(UsageStore::with_max_keys(args.max_quota_keys));
    server.add_service(background_service(
        "bulwark quota flusher",
        QuotaFlusher::new(
            quota_usage.clone(),
            args.state_dir.join(QUOTA_FILE),
            Duration::from_millis(args.quota_flush_ms.max(10)),
            metrics.clone(),
        ),
    ));

    let store = Arc::new(LocalStore::new(STORE_SHARDS, args.max_counters));
    server.add_service(background_service(
        "bulwark fast global sync",
        FastSyncer {
            sync: fast.clone(),
            store: store.clone(),
        },
    ));
    server.add_service(background_service(
        "bulwark counter sweeper",
        Sweeper {
            store: store.clone(),
            metrics: metrics.clone(),
            interval: Duration::from_secs(5),
        },
    ));

    let mut inbound = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy::InboundProxy::new(args.app, policy.clone(), store, Some(fast), metrics.clone())
            .with_quota_usage(quota_usage.clone())
            .with_trusted_proxy_hops(args.trusted_proxy_hops),
        "bulwark inbound",
    );
    inbound.add_tcp(&args.inbound_listen.to_string());

    let mut outbound = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        outbound::OutboundProxy::new(args.outbound_listen, metrics.clone()),
        "bulwark outbound",
    );
    outbound.add_tcp(&args.outbound_listen.to_string());

    let mut admin = Service::new(
        "bulwark admin".to_owned(),
        admin::Admin::new(metrics, policy).with_quota_usage(quota_usage),
    );
    admin.add_tcp(&args.admin_listen.to_string());

    tracing::info!(
        inbound = %args.inbound_listen,
        outbound = %args.outbound_listen,
        admin = %args.admin_listen,
        app = %args.app,
        config_dir = ?args.config_dir,
        operator = ?args.operator_url,
        "bulwark-sidecar starting"
    );
    server.add_service(inbound);
    server.add_service(outbound);
    server.add_service(admin);
    server.run_forever()
}
