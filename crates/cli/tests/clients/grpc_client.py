"""A build through Python's gRPC client (grpcio from PyPI), over HTTP/2:
CreateBuild, GetBuildStatus until it ends, GetBuildArtifact (server
streaming) into a file, and the error codes of a wrong key and of another
tenant's build. Prints one JSON line.

python grpc_client.py GEN_DIR HOST:PORT KEY IMAGE OUT_FILE
"""
import hashlib
import json
import sys
import time

gen, target, key, image, out = sys.argv[1:6]
sys.path.insert(0, gen)

import grpc  # noqa: E402
from builder.v1 import builder_pb2 as pb  # noqa: E402
from builder.v1 import builder_pb2_grpc as rpc  # noqa: E402

auth = [("authorization", f"Bearer {key}")]
with grpc.insecure_channel(target) as channel:
    stub = rpc.BuilderServiceStub(channel)
    created = stub.CreateBuild(
        pb.CreateBuildRequest(
            config=pb.BuildConfig(
                source=pb.BuildSource(docker_image=pb.DockerImageSource(image_uri=image)),
                target=pb.BuildTarget(
                    microvm_rootfs=pb.MicroVMRootfs(
                        format="ext4", init_strategy=pb.INIT_STRATEGY_DIRECT_EXEC
                    )
                ),
            )
        ),
        metadata=auth,
    )
    final = {pb.BUILD_STATE_COMPLETED, pb.BUILD_STATE_FAILED, pb.BUILD_STATE_CANCELLED, pb.BUILD_STATE_TIMEOUT}
    while True:
        status = stub.GetBuildStatus(pb.GetBuildStatusRequest(build_id=created.build_id), metadata=auth)
        if status.state in final:
            break
        time.sleep(0.1)
    digest = hashlib.sha256()
    chunks = 0
    recorded = ""
    with open(out, "wb") as f:
        for chunk in stub.GetBuildArtifact(pb.GetBuildArtifactRequest(build_id=created.build_id), metadata=auth):
            f.write(chunk.data)
            digest.update(chunk.data)
            chunks += 1
            recorded = chunk.sha256

    def code_of(call):
        try:
            call()
        except grpc.RpcError as e:
            return e.code().name
        return "OK"

    wrong_key = code_of(lambda: stub.GetBuildStatus(
        pb.GetBuildStatusRequest(build_id=created.build_id), metadata=[("authorization", "Bearer bd_wrong")]))
    unknown = code_of(lambda: stub.GetBuildStatus(
        pb.GetBuildStatusRequest(build_id="build_0000"), metadata=auth))

print(json.dumps({
    "build_id": created.build_id,
    "state": pb.BuildState.Name(status.state),
    "sha256": digest.hexdigest(),
    "recorded_sha256": recorded,
    "status_sha256": status.artifact.sha256,
    "chunks": chunks,
    "wrong_key": wrong_key,
    "unknown_build": unknown,
}))
