//! flagd's EventStream over Connect (the form flagd's web provider and `curl` use), against the
//! real flagd: the same request to both, the same envelopes back (`provider_ready` first), and
//! a `configuration_change` when the flags change (the sidecar's file rewritten, flagd's too).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use bulwark_e2e::{flagd::Flagd, process::wait_for_status, sidecar::Sidecar};
use serde_json::Value;

const FLAGS: &str = r#"{"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}}"#;

/// The same flags as a FeatureFlag for the sidecar.
fn feature_flag(flagd_json: &str) -> String {
    let spec: Value = serde_json::from_str(flagd_json).unwrap();
    format!(
        "apiVersion: bulwark.dev/v1alpha1\nkind: FeatureFlag\nmetadata: {{name: shop}}\nspec: {spec}\n"
    )
}

/// An open Connect server stream of EventStream: reads its envelopes one by one.
struct Events {
    reader: BufReader<TcpStream>,
    pending: Vec<u8>,
}

impl Events {
    /// `POST /flagd.evaluation.v1.Service/EventStream` with one enveloped `{}`; checks the
    /// response head.
    fn open(addr: SocketAddr) -> Events {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let body = [0u8, 0, 0, 0, 2, b'{', b'}'];
        write!(
            stream,
            "POST /flagd.evaluation.v1.Service/EventStream HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/connect+json\r\nConnect-Protocol-Version: 1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body).unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("content-type: application/connect+json"),
            "{head}"
        );
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        Events {
            reader,
            pending: Vec::new(),
        }
    }

    /// The next envelope's flags and JSON message.
    fn next(&mut self) -> (u8, Value) {
        while self.pending.len() < 5
            || self.pending.len()
                < 5 + u32::from_be_bytes(self.pending[1..5].try_into().unwrap()) as usize
        {
            let mut size = String::new();
            self.reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).unwrap();
            self.pending.extend_from_slice(&chunk[..size]);
        }
        let len = u32::from_be_bytes(self.pending[1..5].try_into().unwrap()) as usize;
        let flags = self.pending[0];
        let message = serde_json::from_slice(&self.pending[5..5 + len]).unwrap();
        self.pending.drain(..5 + len);
        (flags, message)
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn event_stream_over_connect_answers_as_flagd_does() {
    let dir = tempfile::tempdir().unwrap();
    let flag_file = dir.path().join("flags.json");
    write(&flag_file, FLAGS);
    let flagd = Flagd::start(&flag_file, &dir.path().join("flagd.log"));
    let config = dir.path().join("policies");
    std::fs::create_dir(&config).unwrap();
    write(&config.join("flags.yaml"), &feature_flag(FLAGS));
    let unused_app = "127.0.0.1:9".parse().unwrap();
    let sidecar = Sidecar::start(
        unused_app,
        &dir.path().join("state"),
        &["--config-dir", config.to_str().unwrap()],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));

    let mut from_flagd = Events::open(flagd.rpc);
    let mut from_sidecar = Events::open(sidecar.flagd);
    let (flagd_flags, flagd_ready) = from_flagd.next();
    let (flags, ready) = from_sidecar.next();
    assert_eq!((flags, flagd_flags), (0, 0), "data envelopes");
    assert_eq!(ready["type"], "provider_ready");
    assert_eq!(ready["type"], flagd_ready["type"]);

    // A changed flag: both announce a configuration change.
    let changed = FLAGS.replace(r#""defaultVariant": "off""#, r#""defaultVariant": "on""#);
    write(&flag_file, &changed);
    write(&config.join("flags.yaml"), &feature_flag(&changed));
    let flagd_change = loop {
        let (_, event) = from_flagd.next();
        if event["type"] != "keep_alive" {
            break event;
        }
    };
    let (_, change) = from_sidecar.next();
    assert_eq!(
        flagd_change["type"], "configuration_change",
        "{flagd_change}"
    );
    assert_eq!(change["type"], "configuration_change", "{change}");
    assert!(change["data"]["flags"].is_object(), "{change}");
}
