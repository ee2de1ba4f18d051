"""Evaluates flags through the OpenFeature Python SDK, as an app would, with its OFREP provider
or its flagd provider in RPC mode (gRPC, flagd's evaluation API).

    python python_client.py ofrep http://HOST:PORT < evaluations.json
    python python_client.py flagd-rpc HOST:PORT < evaluations.json

stdin: a JSON list of {"key", "type" (boolean|string|number|object), "default", "context"}.
stdout: one JSON object per evaluation: key, value, reason, variant, errorCode.
"""
import json
import sys

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import CacheType, ResolverType
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def plain(value):
    """An enum's value, or the value itself."""
    return getattr(value, "value", value)


def main():
    kind, address = sys.argv[1], sys.argv[2]
    if kind == "ofrep":
        provider = OFREPProvider(base_url=address)
    else:
        host, port = address.rsplit(":", 1)
        # No cache: each evaluation is a call, so the test sees every answer the server gives.
        provider = FlagdProvider(
            resolver_type=ResolverType.RPC, host=host, port=int(port), cache=CacheType.DISABLED
        )
    api.set_provider_and_wait(provider)
    client = api.get_client()
    for e in json.load(sys.stdin):
        context = dict(e.get("context", {}))
        targeting_key = context.pop("targetingKey", None)
        ctx = EvaluationContext(targeting_key=targeting_key, attributes=context)
        evaluate = {
            "boolean": client.get_boolean_details,
            "string": client.get_string_details,
            "number": client.get_float_details,
            "object": client.get_object_details,
        }[e["type"]]
        d = evaluate(e["key"], e["default"], ctx)
        print(json.dumps({
            "key": e["key"],
            "value": d.value,
            "reason": plain(d.reason),
            "variant": d.variant,
            "errorCode": plain(d.error_code),
        }), flush=True)


main()
