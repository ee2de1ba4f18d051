//! One HTTP/1.1 connection kept open for many requests (hyper's client), for tests that send
//! thousands: a connection per request would spend the run in handshakes and TIME_WAIT.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

pub struct KeepAlive {
    runtime: tokio::runtime::Runtime,
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> KeepAlive {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sender = runtime.block_on(async {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            sender
        });
        KeepAlive {
            runtime,
            sender,
            addr,
        }
    }

    /// `POST path` with a JSON body: the status and the whole (de-chunked) body.
    pub fn post_json(&mut self, path: &str, body: Vec<u8>) -> (u16, Bytes) {
        let request = http::Request::post(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let sender = &mut self.sender;
        self.runtime.block_on(async move {
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        })
    }
}
