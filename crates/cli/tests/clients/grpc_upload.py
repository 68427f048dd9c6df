"""An archive uploaded through Python's gRPC client (grpcio from PyPI) with
client streaming, in chunks, then built from upload://ID; another tenant's
CreateBuild naming the same upload gets its error code. Prints one JSON
line.

python grpc_upload.py GEN_DIR HOST:PORT KEY OTHER_KEY ARCHIVE
"""
import json
import sys
import time

gen, target, key, other_key, archive = sys.argv[1:6]
sys.path.insert(0, gen)

import grpc  # noqa: E402
from builder.v1 import builder_pb2 as pb  # noqa: E402
from builder.v1 import builder_pb2_grpc as rpc  # noqa: E402

CHUNK = 64 * 1024
sent = 0


def chunks():
    global sent
    with open(archive, "rb") as f:
        while data := f.read(CHUNK):
            sent += 1
            yield pb.UploadArchiveRequest(data=data)


def config(upload_id):
    return pb.CreateBuildRequest(
        config=pb.BuildConfig(
            source=pb.BuildSource(archive=pb.ArchiveSource(archive_url=f"upload://{upload_id}")),
            strategy=pb.BuildStrategy(archive_strategy=pb.ArchiveBuildStrategy(runtime="static")),
        )
    )


def auth(k):
    return [("authorization", f"Bearer {k}")]


with grpc.insecure_channel(target) as channel:
    stub = rpc.BuilderServiceStub(channel)
    uploaded = stub.UploadArchive(chunks(), metadata=auth(key))
    try:
        stub.CreateBuild(config(uploaded.upload_id), metadata=auth(other_key))
        other = "OK"
    except grpc.RpcError as e:
        other = e.code().name
    created = stub.CreateBuild(config(uploaded.upload_id), metadata=auth(key))
    final = {pb.BUILD_STATE_COMPLETED, pb.BUILD_STATE_FAILED, pb.BUILD_STATE_CANCELLED, pb.BUILD_STATE_TIMEOUT}
    while True:
        status = stub.GetBuildStatus(pb.GetBuildStatusRequest(build_id=created.build_id), metadata=auth(key))
        if status.state in final:
            break
        time.sleep(0.1)

print(json.dumps({
    "upload_id": uploaded.upload_id,
    "sha256": uploaded.sha256,
    "size_bytes": uploaded.size_bytes,
    "expires_at": uploaded.expires_at.seconds,
    "messages_sent": sent,
    "other_tenant": other,
    "build_id": created.build_id,
    "state": pb.BuildState.Name(status.state),
}))
