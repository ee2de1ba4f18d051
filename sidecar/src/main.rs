//! `bulwark-sidecar`: the Pingora proxy that sits beside an app and enforces Bulwark policy.
//!
//! Listeners: `inbound` (clients → sidecar → app on localhost), `outbound` (loopback: the app's
//! calls to other services) and `admin` (loopback: health, readiness, metrics, config, the
//! features' routes). Policy comes from the last good snapshot on disk, then from the
//! configured source (standalone: `--config-dir`; in Kubernetes: the operator stream,
//! `--operator-url`).
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::{sync::Arc, time::Duration};

use bulwark_api::distribution::REPORT_SECONDS;
use bulwark_policy::{
    quota::{flush::QuotaFlusher, store::FILE_NAME as QUOTA_FILE},
    ratelimit::sweeper::{FastSyncer, Sweeper},
    redis_client::RedisClient,
    runtime::{Limits, RedisSource, Runtime},
    webhooks::{
        dispatch::Dispatcher,
        outbox::{Outbox, OutboxConfig},
        store::{FILE_NAME as WEBHOOK_FILE, Retention},
    },
};
use bulwark_sidecar::{
    admin::Admin,
    cli,
    config::{
        Installer, persist,
        stream::{
            OperatorStream,
            report::{DeliveryReporter, OutboxSource},
        },
        watch::ConfigWatcher,
    },
    dns::DnsCache,
    flagd_api::EvaluationServer,
    health::HealthChecker,
    listener::{edge::http_listener, inbound::InboundProxy, outbound::OutboundProxy},
    metrics::Metrics,
    services::Tasks,
    shutdown::{AfterHandover, Drain, Draining, Quiesce},
    webhooks::{api as webhook_api, transport::HttpTransport},
};
use clap::Parser;
use pingora::{
    server::{RunArgs, Server, configuration::Opt},
    services::{background::background_service, listening::Service},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let edge_limits = args.edge_limits()?;
    let draining = Draining::default();
    let tasks = Tasks::default();
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
    let redis = match args.redis_target() {
        Some(target) => {
            let _entered = redis_runtime.enter();
            RedisSource::Flags(
                RedisClient::connect(target, &metrics.policy.stores)
                    .map_err(|e| anyhow::anyhow!("--redis-url/--redis-cluster: {e}"))?,
            )
        }
        // The Redis a snapshot names (operator mode), started when one is installed.
        None => RedisSource::FromSnapshot(redis_runtime.handle().clone()),
    };
    let runtime = Arc::new(
        Runtime::new(
            metrics.policy.clone(),
            redis,
            Limits {
                max_counters: args.max_counters,
                max_quota_keys: args.max_quota_keys,
            },
        )
        .with_zone(args.zone.clone()),
    );
    // Without a policy source there is nothing to wait for: pass-through is the intended state.
    if args.config_dir.is_none() && operator.is_none() {
        runtime.mark_ready();
    }
    let installer = Arc::new(Installer {
        runtime: runtime.clone(),
        state_dir: args.state_dir.clone(),
        metrics: metrics.clone(),
    });

    // The last good snapshot first, so a restarted sidecar enforces before any source answers.
    match persist::load(&args.state_dir) {
        Ok(Some(snapshot)) => match runtime.compile(snapshot) {
            Ok(compiled) => {
                tracing::info!(
                    version = compiled.snapshot.version,
                    "enforcing the last good snapshot from disk"
                );
                runtime.install(compiled);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the saved snapshot cannot be compiled; ignoring it")
            }
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the saved snapshot; ignoring it"),
    }

    if let Some(dir) = &args.config_dir {
        let watcher = ConfigWatcher::new(
            dir.clone(),
            Duration::from_millis(args.config_poll_ms.max(50)),
            installer.clone(),
        );
        // Its first load runs once the listeners serve (liveness answers during it); until a
        // load succeeds the saved snapshot, if any, keeps serving and /readyz says it waits.
        server.add_service(background_service("bulwark config watcher", watcher));
    }

    // The features' long-lived work, started once: quota usage (loaded from disk before
    // serving, flushed in the background), fast global syncs, idle-counter sweeps, the failover
    // upstreams' health checks.
    server.add_service(tasks.service(
        "bulwark quota flusher",
        QuotaFlusher::new(
            runtime.quota_usage.clone(),
            args.state_dir.join(QUOTA_FILE),
            Duration::from_millis(args.quota_flush_ms.max(10)),
            metrics.policy.clone(),
        ),
    ));
    server.add_service(tasks.service(
        "bulwark fast global sync",
        FastSyncer {
            sync: runtime.fast.clone(),
            store: runtime.counters.clone(),
        },
    ));
    server.add_service(tasks.service(
        "bulwark counter sweeper",
        Sweeper {
            store: runtime.counters.clone(),
            metrics: metrics.policy.clone(),
            interval: Duration::from_secs(5),
        },
    ));

    let dns = Arc::new(DnsCache::default());
    server.add_service(tasks.service(
        "bulwark failover health checks",
        HealthChecker {
            runtime: runtime.clone(),
            dns: dns.clone(),
        },
    ));

    // Webhook delivery: the store opens in the dispatcher (retrying while an old sidecar
    // holds it during an upgrade); accepts wait for it.
    let outbox = Outbox::new(
        OutboxConfig {
            path: args.state_dir.join(WEBHOOK_FILE),
            max_bytes: args.webhook_max_store_mb.saturating_mul(1 << 20),
            retention: Retention::default(),
            max_in_flight: args.webhook_max_in_flight.max(1),
        },
        runtime.clone(),
        Arc::new(HttpTransport::default()),
    );
    server.add_service(tasks.service("bulwark webhook dispatcher", Dispatcher(outbox.clone())));

    if let Some((target, tls)) = operator {
        metrics.enable_operator_stream()?;
        // Created after the saved snapshot is installed: its etag goes in the first
        // If-None-Match. Until a snapshot is installed, /readyz says the sidecar waits. Its
        // acknowledgements carry the outbox's delivery counts, for the endpoints' status.
        let deliveries = Arc::new(DeliveryReporter::new(Arc::new(OutboxSource::new(
            outbox.clone(),
            runtime.clone(),
        ))));
        let stream = OperatorStream::new(target, tls, args.token_file.clone(), installer)
            .with_webhook_report(deliveries, Duration::from_secs(REPORT_SECONDS));
        server.add_service(background_service("bulwark operator stream", stream));
    }

    let mut inbound = Service::new(
        "bulwark inbound".to_owned(),
        http_listener(
            &server.configuration,
            InboundProxy::new(args.app, runtime.clone(), metrics.clone())
                .with_dns(dns.clone())
                .with_trusted_proxy_hops(args.trusted_proxy_hops)
                .with_path_normalization(args.path_normalization())
                .with_app_protocol(args.app_protocol),
            edge_limits,
            metrics.inbound.edge.clone(),
            draining.clone(),
        ),
    );
    inbound.add_tcp(&args.inbound_listen.to_string());

    let mut outbound = Service::new(
        "bulwark outbound".to_owned(),
        http_listener(
            &server.configuration,
            OutboundProxy::new(
                args.outbound_listen,
                runtime.clone(),
                metrics.clone(),
                dns.clone(),
            ),
            edge_limits,
            metrics.outbound.edge.clone(),
            draining.clone(),
        ),
    );
    outbound.add_tcp(&args.outbound_listen.to_string());

    let mut admin = Service::new(
        "bulwark admin".to_owned(),
        webhook_api::routes(
            Admin::new(metrics.clone(), runtime.clone())
                .with_quota(runtime.clone())
                .with_flags(runtime.clone())
                .with_failover(runtime.clone()),
            outbox,
        ),
    );
    admin.add_tcp(&args.admin_listen.to_string());

    tracing::info!(
        inbound = %args.inbound_listen,
        outbound = %args.outbound_listen,
        admin = %args.admin_listen,
        flagd = %args.flagd_listen,
        app = %args.app,
        config_dir = ?args.config_dir,
        operator = ?args.operator_url,
        "bulwark-sidecar starting"
    );
    server.add_service(inbound);
    server.add_service(outbound);
    server.add_service(admin);
    server.add_service(background_service(
        "bulwark flagd evaluation API",
        EvaluationServer {
            listen: args.flagd_listen,
            runtime: runtime.clone(),
        },
    ));
    let quiesce = Arc::new(Quiesce {
        in_flight: [
            metrics.inbound.in_flight.clone(),
            metrics.outbound.in_flight.clone(),
        ],
        grace: Duration::from_secs(args.shutdown_grace_seconds),
        tasks,
    });
    server.add_service(background_service(
        "bulwark after handover",
        AfterHandover(quiesce.clone(), draining.clone()),
    ));
    server.run(RunArgs {
        shutdown_signal: Box::new(Drain { draining, quiesce }),
    });
    Ok(())
}
