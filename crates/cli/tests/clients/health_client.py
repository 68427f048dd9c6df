"""grpc.health.v1 through Python's gRPC client (grpcio-health-checking's
stubs), over HTTP/2: Check for the whole server, for builder.v1 and for a
service it does not have, then Watch of the whole server. Prints one JSON
line for the checks and the first status watched, then one line for each
later status until the stream ends.

python health_client.py HOST:PORT
"""
import json
import sys

import grpc
from grpc_health.v1 import health_pb2 as pb
from grpc_health.v1 import health_pb2_grpc as rpc

target = sys.argv[1]
name = pb.HealthCheckResponse.ServingStatus.Name


def code(call):
    try:
        return name(call().status)
    except grpc.RpcError as e:
        return e.code().name


with grpc.insecure_channel(target) as channel:
    stub = rpc.HealthStub(channel)
    report = {
        "server": code(lambda: stub.Check(pb.HealthCheckRequest(service=""), timeout=10)),
        "builder": code(
            lambda: stub.Check(
                pb.HealthCheckRequest(service="builder.v1.BuilderService"), timeout=10
            )
        ),
        "unknown": code(lambda: stub.Check(pb.HealthCheckRequest(service="nope.v1.Nope"), timeout=10)),
    }
    watch = stub.Watch(pb.HealthCheckRequest(service=""), timeout=60)
    try:
        for i, status in enumerate(watch):
            if i == 0:
                report["watch"] = name(status.status)
                print(json.dumps(report), flush=True)
            else:
                print(json.dumps({"watch": name(status.status)}), flush=True)
    except grpc.RpcError as e:
        print(json.dumps({"ended": e.code().name}), flush=True)
