"""A gRPC server and client over PyPI grpcio (pinned in e2e/peers/versions.env), to drive the
sidecar with a real gRPC stack. Messages are raw bytes (grpcio's generic handlers with no
serializer), so no generated code or protoc is needed: gRPC's framing, metadata, trailers,
status codes and deadlines are what is under test, not protobuf.

Usage:
  PYTHON grpc_echo.py serve PORT [unavailable] [tls CERT_FILE KEY_FILE]
      Service bulwark.test.Echo on 127.0.0.1:PORT (0: any); prints `listening PORT`.
      Unary         echoes the request; initial metadata x-initial: yes, trailing
                    metadata x-trailer: done and x-seen-forwarded-for (the x-forwarded-for
                    it got) and x-seen-client (the x-client metadata it got). Waits
                    x-delay-ms milliseconds first when the call has that metadata. With
                    `unavailable`, every Unary call fails UNAVAILABLE (a server going down).
      With `tls`, HTTP/2 over TLS with that certificate (gRPC requires ALPN h2).
      ServerStream  the request is an ASCII count N (and optionally ":MS", a pause between
                    messages in milliseconds): N messages "i".
      BidiStream    echoes each message as it comes.
      Fail          aborts with the status named by the request (e.g. "UNAVAILABLE").
      Also shop.v1.Orders/CreateOrder, answered as Unary (for examples/ that name it).
  PYTHON grpc_echo.py call TARGET METHOD JSON
      One call to TARGET (host:port); METHOD is one of bulwark.test.Echo's, or a full
      `package.Service/Method` (unary). JSON: {"request": str, "size": int (a request of that
      many bytes instead), "metadata": {k: v}, "timeout": seconds, "messages": [str] (bidi),
      "authority": str, "repeat": N (N calls on one channel)}. Prints one JSON line: code (a
      grpc.StatusCode name), details, responses (their lengths for large ones: "sizes"),
      initial and trailing metadata; with repeat, those of the last call and "codes", every
      call's code in order.
  PYTHON grpc_echo.py drain-probe TARGET
      On one channel: starts ServerStream "10:300" and prints `streaming` at its first
      message; on a line on stdin, makes a Unary call (2 s deadline); prints one JSON line
      {"stream": {code, count}, "unary": {code, details}} once both are done.
"""
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "bulwark.test.Echo"


def serve(port, unavailable=False, tls=None):
    def unary(request, context):
        meta = dict(context.invocation_metadata())
        if unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this server is unavailable")
        if "x-delay-ms" in meta:
            time.sleep(int(meta["x-delay-ms"]) / 1000)
        context.send_initial_metadata((("x-initial", "yes"),))
        context.set_trailing_metadata((
            ("x-trailer", "done"),
            ("x-seen-forwarded-for", meta.get("x-forwarded-for", "")),
            ("x-seen-client", meta.get("x-client", "")),
        ))
        return request

    def server_stream(request, context):
        spec = request.decode()
        count, _, pause = spec.partition(":")
        for i in range(int(count)):
            if i and pause:
                time.sleep(int(pause) / 1000)
            yield str(i).encode()

    def bidi(requests, context):
        for message in requests:
            yield message

    def fail(request, context):
        context.abort(getattr(grpc.StatusCode, request.decode()), "failed as asked")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "BidiStream": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
    orders = {"CreateOrder": handlers["Unary"]}
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(SERVICE, handlers),
        grpc.method_handlers_generic_handler("shop.v1.Orders", orders),
    ))
    if tls:
        cert, key = (open(path, "rb").read() for path in tls)
        credentials = grpc.ssl_server_credentials(((key, cert),))
        bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening {bound}", flush=True)
    server.wait_for_termination()


def call(target, method, spec):
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    if "authority" in spec:
        options.append(("grpc.default_authority", spec["authority"]))
    channel = grpc.insecure_channel(target, options=options)
    codes = []
    for _ in range(spec.get("repeat", 1)):
        out = one_call(channel, method, spec)
        codes.append(out["code"])
    if "repeat" in spec:
        out["codes"] = codes
    print(json.dumps(out), flush=True)


def one_call(channel, method, spec):
    path = f"/{method}" if "/" in method else f"/{SERVICE}/{method}"
    request = b"x" * spec["size"] if "size" in spec else spec.get("request", "").encode()
    metadata = tuple(spec.get("metadata", {}).items())
    timeout = spec.get("timeout", 10)
    out = {"code": "OK", "details": "", "responses": [], "initial": {}, "trailing": {}}
    try:
        if method in ("Unary", "Fail") or "/" in method:
            fn = channel.unary_unary(path)
            response, call_ = fn.with_call(request, metadata=metadata, timeout=timeout)
            responses = [response]
        elif method == "ServerStream":
            call_ = channel.unary_stream(path)(request, metadata=metadata, timeout=timeout)
            responses = list(call_)
        elif method == "BidiStream":
            messages = [m.encode() for m in spec.get("messages", [])]
            call_ = channel.stream_stream(path)(iter(messages), metadata=metadata, timeout=timeout)
            responses = list(call_)
        else:
            raise SystemExit(f"unknown method {method}")
        out["initial"] = dict(call_.initial_metadata() or ())
        out["trailing"] = dict(call_.trailing_metadata() or ())
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details() or ""
        out["initial"] = dict(e.initial_metadata() or ())
        out["trailing"] = dict(e.trailing_metadata() or ())
        responses = []
    if any(len(r) > 1024 for r in responses):
        out["sizes"] = [len(r) for r in responses]
    else:
        out["responses"] = [r.decode(errors="replace") for r in responses]
    return out


def drain_probe(target):
    channel = grpc.insecure_channel(target)
    stream = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"10:300", timeout=20)
    received, stream_code = 0, "OK"
    try:
        for _ in stream:
            received += 1
            if received == 1:
                print("streaming", flush=True)
                sys.stdin.readline()
                break
        unary_code, unary_details = "OK", ""
        try:
            channel.unary_unary(f"/{SERVICE}/Unary")(b"probe", timeout=2)
        except grpc.RpcError as e:
            unary_code, unary_details = e.code().name, e.details() or ""
        for _ in stream:
            received += 1
    except grpc.RpcError as e:
        stream_code = e.code().name
    print(json.dumps({
        "stream": {"code": stream_code, "count": received},
        "unary": {"code": unary_code, "details": unary_details},
    }), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        args = sys.argv[3:]
        tls = args[args.index("tls") + 1:args.index("tls") + 3] if "tls" in args else None
        serve(int(sys.argv[2]), unavailable="unavailable" in args, tls=tls)
    elif sys.argv[1] == "call":
        call(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif sys.argv[1] == "drain-probe":
        drain_probe(sys.argv[2])
    else:
        raise SystemExit(__doc__)
