"""An HTTP/1.1 upstream whose failures a test controls, standing in for a backend.

Every answer's body is the server's NAME, so a test sees which endpoint served a call. A test
sets how it behaves with `POST /__mode` and a body of:
  ok            200 (the default)
  status:N      answers N to everything, /healthz included
  slow:MS       waits MS milliseconds before answering
  reset         closes the connection without answering
  truncate      sends the header and half the body, then closes
and reads the number of requests it has served (any mode, control calls excluded) with
`GET /__count`. Killing the process is the hard failure.
Usage: python3 fault_upstream.py PORT NAME [CERT_PEM KEY_PEM]   (with a certificate: HTTPS)
"""
import http.server
import ssl
import sys
import threading
import time

PORT, NAME = int(sys.argv[1]), sys.argv[2].encode()
state = {"mode": "ok", "count": 0}
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Header and body go out in one segment: with Nagle's algorithm on, the body would wait
    # for the client's delayed ACK of the header (40 ms per keep-alive request).
    disable_nagle_algorithm = True
    wbufsize = -1

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/__mode":
            with lock:
                state["mode"] = body.decode().strip()
            return self.answer(200, b"mode set")
        if self.path == "/__count":
            with lock:
                return self.answer(200, str(state["count"]).encode())
        with lock:
            state["count"] += 1
            mode = state["mode"]
        if mode.startswith("status:"):
            return self.answer(int(mode.split(":")[1]), NAME)
        if mode.startswith("slow:"):
            time.sleep(int(mode.split(":")[1]) / 1000)
        if mode == "reset":
            self.close_connection = True
            return
        if mode == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", str(2 * len(NAME)))
            self.end_headers()
            self.wfile.write(NAME)
            self.wfile.flush()
            self.close_connection = True
            return
        self.answer(200, NAME)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    # socketserver's default backlog (5) resets a burst of new connections, which a proxy
    # would rightly count against this backend.
    request_queue_size = 128


server = Server(("127.0.0.1", PORT), Handler)
if len(sys.argv) > 4:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
