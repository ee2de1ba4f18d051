//! The admin listener: `/healthz`, `/readyz`, `/metrics`, over HTTP/1.1.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};

use crate::{api_check::Readiness, metrics::Metrics};

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn route(path: &str, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    match path {
        "/healthz" => respond(StatusCode::OK, plain, "ok\n"),
        "/readyz" => match ready {
            Readiness::Ready => respond(StatusCode::OK, plain, "ready\n"),
            Readiness::Starting => respond(StatusCode::SERVICE_UNAVAILABLE, plain, "starting\n"),
            Readiness::NotReady(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                plain,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => respond(StatusCode::OK, prometheus::TEXT_FORMAT, metrics.render()),
        _ => respond(
            StatusCode::NOT_FOUND,
            plain,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin listener up");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.changed() => return Ok(()),
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = route(req.uri().path(), &metrics, &ready.borrow());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_explains_why_it_is_not_ready() {
        let m = Metrics::new().unwrap();
        let r = route("/readyz", &m, &Readiness::NotReady("no CRDs".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            route("/readyz", &m, &Readiness::Ready).status(),
            StatusCode::OK
        );
        assert_eq!(
            route("/healthz", &m, &Readiness::Starting).status(),
            StatusCode::OK
        );
        assert_eq!(
            route("/x", &m, &Readiness::Ready).status(),
            StatusCode::NOT_FOUND
        );
    }
}
