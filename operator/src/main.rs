//! `bulwark-operator`: watches Bulwark's custom resources, compiles them per pod, streams each
//! sidecar its own snapshot, writes status (as leader), and injects the sidecar into pods.
//!
//! Tasks, all stopped by SIGTERM: the admin listener (/healthz, /readyz, /metrics), the API
//! check, certificate rotation, the injection webhook and the policy stream (TLS), the index
//! loop fed by the watches, this replica's distribution report, and, while it leads, the status
//! writer.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use bulwark_operator::{
    admin, admission, api_check, cli,
    distribution::{Distributor, acks, auth::Authenticator, server::StreamServer},
    index::Index,
    inject::{self, InjectConfig},
    leader, metrics, signing, status,
    tls::{self, CertResolver, TlsConfig},
    validate,
    watch::{self as index_watch, Shared},
};
use clap::Parser;
use tokio::{sync::watch, task::JoinSet};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let identity = args.identity();
    tracing::info!(
        %identity,
        namespace = %args.namespace,
        sidecar_operator_url = %args.sidecar_operator_url(),
        "starting"
    );

    let client = args
        .kube_client()
        .await
        .context("cannot configure the Kubernetes client")?;
    let metrics = Arc::new(metrics::Metrics::new()?);
    let (ready_tx, ready_rx) = watch::channel(api_check::Readiness::Starting);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    tasks.spawn(admin::serve(
        args.admin_listen,
        metrics.clone(),
        ready_rx,
        shutdown_rx.clone(),
    ));
    // Certificates first: the webhook and the stream both serve with them.
    let tls_config = TlsConfig::from_args(&args);
    let certs = tls::ensure(&client, &tls_config)
        .await
        .context("cannot create or read the operator's certificates")?;
    let resolver = CertResolver::new(certs)?;
    let server_tls = tls::server_config(resolver.clone());
    tasks.spawn({
        let rotation = tls::run_rotation(
            client.clone(),
            tls_config,
            resolver.clone(),
            shutdown_rx.clone(),
        );
        async move {
            rotation.await;
            Ok(())
        }
    });

    // The admission webhooks: sidecar injection and validation.
    let inject_config = Arc::new(InjectConfig::from_args(&args, resolver.ca_pem()));
    let observe_injection = {
        let metrics = metrics.clone();
        Arc::new(move |outcome: &inject::Outcome| {
            metrics
                .injections
                .with_label_values(&[outcome.label()])
                .inc()
        })
    };
    let observe_validation = {
        let metrics = metrics.clone();
        Arc::new(move |verdict: &validate::Verdict| {
            metrics
                .validations
                .with_label_values(&[verdict.label()])
                .inc()
        })
    };
    tasks.spawn(tls::serve_tls(
        listen(args.webhook_listen, "--webhook-listen").await?,
        server_tls.clone(),
        move |_peer| {
            admission::service(
                inject_config.clone(),
                observe_injection.clone(),
                observe_validation.clone(),
            )
        },
        shutdown_rx.clone(),
    ));

    // The index and the policy stream.
    let shared = Arc::new(Shared {
        index: Arc::new(RwLock::new(Index::with_signing_ledger(
            args.signing_keys_secret(),
        ))),
        distributor: Arc::new(Distributor::new()),
        acks: Arc::new(acks::AckBook::default()),
        metrics: metrics.clone(),
        changed: Arc::default(),
        redis: args.redis(),
        app_protocol_conflicts: Default::default(),
    });
    // Ready when the API is served and the index has listed everything once.
    let gate: api_check::Gate = {
        let distributor = shared.distributor.clone();
        Arc::new(move || {
            (!distributor.is_synced()).then(|| {
                "the index has not listed every watched type yet (is RBAC missing? see the log)"
                    .to_string()
            })
        })
    };
    tasks.spawn({
        let task = api_check::run(
            client.clone(),
            args.api_check_interval(),
            metrics.clone(),
            ready_tx,
            gate,
            shutdown_rx.clone(),
        );
        async move {
            task.await;
            Ok(())
        }
    });
    tasks.spawn({
        let run = index_watch::run(
            shared.clone(),
            index_watch::all_changes(&client),
            shutdown_rx.clone(),
        );
        async move {
            run.await;
            Ok(())
        }
    });
    let stream_server = Arc::new(StreamServer {
        distributor: shared.distributor.clone(),
        auth: Authenticator::new(client.clone()),
        acks: shared.acks.clone(),
        metrics: metrics.clone(),
    });
    tasks.spawn(tls::serve_tls(
        listen(args.distribution_listen, "--distribution-listen").await?,
        server_tls,
        move |_peer| {
            let server = stream_server.clone();
            hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, std::convert::Infallible>(server.handle(req).await) }
            })
        },
        shutdown_rx.clone(),
    ));
    tasks.spawn({
        let reporter = acks::run_reporter(
            client.clone(),
            args.namespace.clone(),
            identity.clone(),
            args.pod_uid.clone(),
            shared.acks.clone(),
            shutdown_rx.clone(),
        );
        async move {
            reporter.await;
            Ok(())
        }
    });

    // Leadership and status.
    let reports = Arc::new(status::Reports::default());
    tasks.spawn({
        let watch = status::watch_reports(
            client.clone(),
            args.namespace.clone(),
            reports.clone(),
            shared.changed.clone(),
            shutdown_rx.clone(),
        );
        async move {
            watch.await;
            Ok(())
        }
    });
    let (leader_tx, leader_rx) = watch::channel(false);
    tasks.spawn(leader::run(
        client.clone(),
        args.namespace.clone(),
        args.lease_name.clone(),
        identity.clone(),
        leader_tx,
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn({
        let writer = status::StatusWriter::new(client.clone(), &identity);
        let ledger = signing::LedgerWriter::new(client.clone(), args.signing_keys_secret());
        let run = status::run(shared, reports, writer, ledger, leader_rx, shutdown_rx);
        async move {
            run.await;
            Ok(())
        }
    });

    // Until SIGTERM, or until a task fails (then exit non-zero so the kubelet restarts us).
    let failed = tokio::select! {
        _ = shutdown_signal() => None,
        Some(result) = tasks.join_next() => Some(result),
    };
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "a task ended with an error during shutdown");
        }
    }
    match failed {
        None => Ok(()),
        Some(Ok(Ok(()))) => anyhow::bail!("a task ended unexpectedly"),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(e.into()),
    }
}

/// Resolves on SIGTERM (how the kubelet stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail in a normal process");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Binds a listener before its server task starts, so a taken port stops the operator at once
/// with the flag named.
async fn listen(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {flag} {addr}"))
}
