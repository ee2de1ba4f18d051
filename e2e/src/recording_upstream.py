"""A lenient HTTP/1.1 upstream that records exactly what it receives.

Each request's head (as bytes on the wire) and body are appended to the log file as one JSON
line ({"head": ..., "body": ...}, latin-1 text). It parses leniently on purpose, as a careless
app would: the body length is the first number of the first Content-Length header ("5, 5" is 5),
so a test can show that no bytes of one request ever reach it as part of another.
Usage: python3 recording_upstream.py PORT LOG
"""
import json
import re
import socketserver
import sys

LOG = sys.argv[2]


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline(65536)
                if not line:
                    return
                head += line
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            body = self.rfile.read(int(match.group(1))) if match else b""
            with open(LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps({"head": head.decode("latin-1"), "body": body.decode("latin-1")}) + "\n")
            close = re.search(rb"(?im)^connection:\s*close", head) is not None
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + b"\r\nrecorded"
            )
            self.wfile.flush()
            if close:
                return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
