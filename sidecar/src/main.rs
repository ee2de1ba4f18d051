//! `bulwark-sidecar`: the Pingora proxy that sits beside an app and enforces Bulwark policy.
//!
//! Listeners: `inbound` (clients → sidecar → app on localhost) and `admin` (loopback: health,
//! readiness, metrics). Policy sources and enforcement modules plug into `proxy`'s phases.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use bulwark_sidecar::{admin, cli, metrics, proxy};
use std::sync::Arc;

use clap::Parser;
use pingora::{
    server::{Server, configuration::Opt},
    services::listening::Service,
};

fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let conf = args.server_conf()?;
    let mut server = Server::new_with_opt_and_conf(
        Opt {
            upgrade: args.upgrade,
            ..Opt::default()
        },
        conf,
    );
    server.bootstrap();

    let metrics = Arc::new(metrics::Metrics::new()?);

    let mut inbound = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy::InboundProxy::new(args.app, metrics.clone()),
        "bulwark inbound",
    );
    inbound.add_tcp(&args.inbound_listen.to_string());

    let mut admin = Service::new("bulwark admin".to_owned(), admin::Admin::new(metrics));
    admin.add_tcp(&args.admin_listen.to_string());

    tracing::info!(
        inbound = %args.inbound_listen,
        admin = %args.admin_listen,
        app = %args.app,
        "bulwark-sidecar starting"
    );
    server.add_service(inbound);
    server.add_service(admin);
    server.run_forever()
}
