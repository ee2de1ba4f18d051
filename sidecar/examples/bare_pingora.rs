//! The benchmark's "framework alone" peer: a Pingora reverse proxy with no Bulwark code, the
//! same Pingora version, allocator and thread count as `bulwark-sidecar`. Its row in
//! `make bench` separates what Pingora costs per request from what Bulwark adds.
//!
//! Usage: `bare_pingora LISTEN_ADDR UPSTREAM_ADDR` (both `host:port`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::{
    Result,
    prelude::HttpPeer,
    proxy::{ProxyHttp, Session},
    server::{Server, configuration::ServerConf},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR");
    };
    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: 1,
            ..ServerConf::default()
        },
    );
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: upstream.parse()?,
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
