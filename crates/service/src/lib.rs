pub mod proto {
    connectrpc::include_generated!();
}
