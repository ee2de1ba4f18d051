//! `bulwark-operator`: watches Bulwark's custom resources, compiles them per workload, and serves
//! each sidecar its own policy.
//!
//! This version connects to the apiserver, checks that Bulwark's API is installed, and serves
//! `/healthz`, `/readyz` and `/metrics`; controllers, the snapshot server and injection plug into
//! `main` as further tasks.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::sync::Arc;

use anyhow::Context as _;
use bulwark_operator::{admin, api_check, cli, metrics};
use clap::Parser;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    tracing::info!(
        identity = %args.identity(),
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

    let admin = tokio::spawn(admin::serve(
        args.admin_listen,
        metrics.clone(),
        ready_rx,
        shutdown_rx.clone(),
    ));
    let checker = tokio::spawn(api_check::run(
        client,
        args.api_check_interval(),
        metrics,
        ready_tx,
        shutdown_rx,
    ));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    admin.await??;
    checker.await?;
    Ok(())
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
