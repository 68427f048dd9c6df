//! Generates the builder.v1 messages and service trait from proto/ (protoc
//! from Debian's protobuf-compiler, or $PROTOC).
fn main() {
    connectrpc_build::Config::new()
        .files(&["../../proto/builder/v1/builder.proto"])
        .includes(&["../../proto/"])
        .include_file("_connectrpc.rs")
        // The schema, for checking JSON requests' field names (strict_json.rs).
        .emit_descriptor_set("builder_descriptor.bin")
        .compile()
        .expect("generating builder.v1 from proto/ (is protoc installed?)");
}
