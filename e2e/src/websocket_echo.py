"""A WebSocket echo server and client over PyPI websockets (pinned in e2e/peers/versions.env),
to check that an Upgrade passes through the sidecar.

Usage:
  PYTHON websocket_echo.py serve PORT
      Echoes every message on 127.0.0.1:PORT (0: any); prints `listening PORT`.
  PYTHON websocket_echo.py talk URL JSON
      Connects to URL and, for each entry of JSON {"messages": [str], "large": bytes,
      "pause": seconds}, sends it and reads the echo (the large one, a binary message of that
      many bytes, last; "pause": an idle wait before it). Prints one JSON line: {"echoed":
      [str], "large": its length echoed, "status": the handshake's HTTP status}.
"""
import json
import sys
import time

from websockets.sync.client import connect
from websockets.sync.server import serve


def echo(ws):
    for message in ws:
        ws.send(message)


def main():
    if sys.argv[1] == "serve":
        with serve(echo, "127.0.0.1", int(sys.argv[2]), max_size=None) as server:
            print(f"listening {server.socket.getsockname()[1]}", flush=True)
            server.serve_forever()
    elif sys.argv[1] == "talk":
        spec = json.loads(sys.argv[3])
        out = {"echoed": []}
        with connect(sys.argv[2], max_size=None, open_timeout=10) as ws:
            out["status"] = ws.response.status_code
            for message in spec.get("messages", []):
                ws.send(message)
                out["echoed"].append(ws.recv(timeout=10))
            time.sleep(spec.get("pause", 0))
            if "large" in spec:
                ws.send(b"x" * spec["large"])
                out["large"] = len(ws.recv(timeout=10))
        print(json.dumps(out), flush=True)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
