//! Key extraction from hostile requests: any header, cookie, query and bearer-token bytes go
//! through a policy keyed by all of them; deciding never panics.
#![no_main]

use bulwark_api::snapshot::{PolicySource, Snapshot, Sourced};
use bulwark_policy::{
    admission::Direction, metrics::PolicyMetrics, request::RequestView, runtime::Runtime,
};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const POLICY: &str = r#"{
  "rules": [{
    "name": "all-parts",
    "match": {"headers": [{"name": "x-tenant", "type": "RegularExpression", "value": "t-[0-9]+"}]},
    "key": [
      {"type": "Header", "name": "x-api-key"},
      {"type": "Cookie", "name": "session"},
      {"type": "QueryParam", "name": "user"},
      {"type": "JWTClaim", "name": "org.id"},
      {"type": "ClientIP"},
      {"type": "Path"}
    ],
    "rates": [{"limit": 1000000, "window": "1s"}]
  }]
}"#;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = Runtime::local(Arc::new(PolicyMetrics::unregistered()));
        let snapshot = Snapshot {
            rate_limits: vec![Sourced {
                source: PolicySource::default(),
                spec: serde_json::from_str(POLICY).unwrap(),
            }],
            ..Snapshot::empty()
        };
        runtime.install(runtime.compile(snapshot).unwrap());
        runtime
    })
}

fuzz_target!(|data: &[u8]| {
    // Parts separated by 0xff: header values, then the query and the path.
    let mut parts = data.split(|&b| b == 0xff);
    let mut headers = HeaderMap::new();
    for name in [
        "x-api-key",
        "cookie",
        "authorization",
        "x-tenant",
        "x-api-key",
    ] {
        if let Some(value) = parts.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.append(name, value);
        }
    }
    let query = parts.next().and_then(|q| std::str::from_utf8(q).ok());
    let path = parts
        .next()
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or("/");
    let view = RequestView {
        method: "GET",
        path,
        query,
        host: Some("api"),
        headers: &headers,
        client_ip: Some([10, 0, 0, 1].into()),
    };
    let _ = futures_lite_block_on(runtime().admit(Direction::Inbound, &view, 1));
});

/// Local decisions never wait: one poll finishes them.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = std::task::Waker::noop();
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker))
    {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("a local decision waited"),
    }
}
