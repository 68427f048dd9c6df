// A build through the Connect TypeScript client (@connectrpc/connect-node),
// binary protobuf over HTTP/1.1: CreateBuild, GetBuildStatus until it ends,
// StreamBuildLogs (server streaming), GetBuildArtifact (server streaming)
// into a file. Prints one JSON line: the build id, its state, the sha256 of
// the bytes received, and how many log lines came.
//
// node connect_client.mjs GEN_DIR URL KEY IMAGE OUT_FILE
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

const [gen, baseUrl, key, image, out] = process.argv.slice(2);
const { BuilderService, BuildState, InitStrategy } = await import(`${gen}/builder/v1/builder_pb.js`);

const transport = createConnectTransport({
  baseUrl,
  httpVersion: "1.1",
  useBinaryFormat: true,
  interceptors: [(next) => (req) => {
    req.header.set("Authorization", `Bearer ${key}`);
    return next(req);
  }],
});
const client = createClient(BuilderService, transport);

const created = await client.createBuild({
  config: {
    source: { sourceType: { case: "dockerImage", value: { imageUri: image } } },
    target: {
      targetType: {
        case: "microvmRootfs",
        value: { format: "ext4", initStrategy: InitStrategy.DIRECT_EXEC },
      },
    },
  },
});
const buildId = created.buildId;
let status;
for (;;) {
  status = await client.getBuildStatus({ buildId });
  if ([BuildState.COMPLETED, BuildState.FAILED, BuildState.CANCELLED, BuildState.TIMEOUT].includes(status.state)) break;
  await new Promise((r) => setTimeout(r, 100));
}
let logLines = 0;
for await (const line of client.streamBuildLogs({ buildId, follow: true })) {
  if (line.message) logLines++;
}
const hash = createHash("sha256");
const chunks = [];
let recorded = "";
for await (const chunk of client.getBuildArtifact({ buildId })) {
  hash.update(chunk.data);
  chunks.push(chunk.data);
  recorded = chunk.sha256;
}
writeFileSync(out, Buffer.concat(chunks));
console.log(JSON.stringify({
  build_id: buildId,
  state: BuildState[status.state],
  sha256: hash.digest("hex"),
  recorded_sha256: recorded,
  status_sha256: status.artifact?.sha256,
  log_lines: logLines,
}));
