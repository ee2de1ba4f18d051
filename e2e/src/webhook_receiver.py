"""A webhook receiver that verifies every delivery with the official Standard Webhooks library
(PyPI `standardwebhooks`, pinned in e2e/peers/versions.env), as a real consumer would.
webhook_receiver.js is the same program over the npm library; keep the two in step.

Usage: PYTHON webhook_receiver.py PORT LOG SECRET [CERT KEY]
  PORT    loopback port to bind (0: any free one); once bound it prints `listening PORT`.
  LOG     file that gets one JSON line per delivery, appended (kept across restarts).
  SECRET  the endpoint's `whsec_<base64 key>` secret.
  CERT KEY  PEM files: serve HTTPS with this certificate chain and key (Python only).

A delivery is a POST to any path but /_control. Its body is checked with
`Webhook(secret).verify(body, headers)` and one line is appended to LOG before the answer goes
out: {"id", "timestamp", "signature" (the webhook-* headers, null when missing), "verified",
"error" (the library's exception, null when verified), "path", "body" (the text), "status"
(the answer), "receivedAt" (unix seconds)}. Unverified: 401. Verified: as the mode says.

The mode is set with `POST /_control` and a JSON body, and read with `GET /_control`:
  {"mode": "ok"}                          204 (the default)
  {"mode": "fail", "status": 503}         that status (default 500)
  {"mode": "slow", "delaySeconds": 3}     waits, then 204 (default 1 s)
  {"mode": "ratelimit", "retryAfter": "1"}  429 with that Retry-After (default "1")
  {"mode": "redirect", "location": URL}   307 to that location
Any of them with "times": N applies to the next N verified deliveries, then the mode is ok again.
The answer to POST /_control is the mode as it now stands (400 with {"error"} if invalid).
"""
import http.server
import json
import math
import ssl
import sys
import threading
import time

from standardwebhooks import Webhook

PORT, LOG, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3]
WEBHOOK = Webhook(SECRET)
OK = {"mode": "ok"}
state = {"mode": dict(OK)}
lock = threading.Lock()


def normalize(spec):
    """The mode `spec` asks for, with its defaults; ValueError if it is not one."""
    if not isinstance(spec, dict):
        raise ValueError("a JSON object is expected")
    name = spec.get("mode")
    if name == "ok":
        mode = {"mode": "ok"}
    elif name == "fail":
        status = spec.get("status", 500)
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError("status must be an integer from 100 to 599")
        mode = {"mode": "fail", "status": status}
    elif name == "slow":
        delay = spec.get("delaySeconds", 1)
        if (not isinstance(delay, (int, float)) or isinstance(delay, bool)
                or not math.isfinite(delay) or delay < 0):
            raise ValueError("delaySeconds must be a number >= 0")
        mode = {"mode": "slow", "delaySeconds": delay}
    elif name == "ratelimit":
        retry_after = spec.get("retryAfter", "1")
        if isinstance(retry_after, bool) or not isinstance(retry_after, (str, int)):
            raise ValueError("retryAfter must be a string or an integer")
        mode = {"mode": "ratelimit", "retryAfter": str(retry_after)}
    elif name == "redirect":
        location = spec.get("location")
        if not isinstance(location, str) or not location:
            raise ValueError("location must be a URL")
        mode = {"mode": "redirect", "location": location}
    else:
        raise ValueError("mode must be ok, fail, slow, ratelimit or redirect")
    if "times" in spec:
        times = spec["times"]
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            raise ValueError("times must be an integer >= 1")
        mode["times"] = times
    return mode


def take_mode():
    """The mode for one verified delivery, counting it against "times"."""
    with lock:
        mode = state["mode"]
        if "times" in mode:
            mode["times"] -= 1
            if mode["times"] == 0:
                state["mode"] = dict(OK)
            mode = dict(mode)
            del mode["times"]
        return mode


def append_log(entry):
    line = json.dumps(entry) + "\n"
    with lock:
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(line)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Header and body in one segment, without Nagle's delay (see fault_upstream.py).
    disable_nagle_algorithm = True
    wbufsize = -1

    def log_message(self, *args):
        pass

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status, body=None, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status == 204 or status < 200 or status == 304:
            self.end_headers()
            return
        data = json.dumps(body if body is not None else {}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.split("?")[0] == "/_control":
            with lock:
                return self.answer(200, dict(state["mode"]))
        self.answer(405, {"error": "deliveries are POSTs"}, [("Allow", "POST")])

    def do_POST(self):
        received_at = time.time()
        body = self.read_body()
        if self.path.split("?")[0] == "/_control":
            try:
                mode = normalize(json.loads(body))
            except ValueError as e:  # json.JSONDecodeError is one
                return self.answer(400, {"error": str(e)})
            with lock:
                state["mode"] = mode
            return self.answer(200, dict(mode))

        headers = dict(self.headers.items())
        try:
            WEBHOOK.verify(body, headers)
            verified, error = True, None
        except Exception as e:  # noqa: BLE001 -- whatever the library refuses with
            verified, error = False, f"{type(e).__name__}: {e}"
        mode = take_mode() if verified else None
        if not verified:
            status, extra, delay = 401, [], 0
        elif mode["mode"] == "fail":
            status, extra, delay = mode["status"], [], 0
        elif mode["mode"] == "ratelimit":
            status, extra, delay = 429, [("Retry-After", mode["retryAfter"])], 0
        elif mode["mode"] == "redirect":
            status, extra, delay = 307, [("Location", mode["location"])], 0
        else:
            status, extra, delay = 204, [], mode.get("delaySeconds", 0)

        lower = {k.lower(): v for k, v in headers.items()}
        append_log({
            "id": lower.get("webhook-id"),
            "timestamp": lower.get("webhook-timestamp"),
            "signature": lower.get("webhook-signature"),
            "verified": verified,
            "error": error,
            "path": self.path,
            "body": body.decode("utf-8", errors="replace"),
            "status": status,
            "receivedAt": received_at,
        })
        if delay:
            time.sleep(delay)
        self.answer(status, {"error": error} if error else {"status": status}, extra)

    def not_allowed(self):
        self.read_body()  # so that the next request on this connection starts where it should
        self.answer(405, {"error": "deliveries are POSTs"}, [("Allow", "POST")])

    do_PUT = do_DELETE = do_PATCH = not_allowed


class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that gave up (a timeout while the mode is slow) is not an error here.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


server = Server(("127.0.0.1", PORT), Handler)
if len(sys.argv) > 5:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
