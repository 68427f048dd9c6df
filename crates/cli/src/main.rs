//! The `builderd` command: turns software into microVM root filesystems.

mod archive_args;
mod boot;
mod boot_args;
mod build;
mod client;
mod ext4_args;
mod mkfs;
mod policy_args;
mod progress;
mod project_args;
mod reporters;
mod retry_args;
mod serve;
mod steps_args;
mod units;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "builderd",
    version,
    about = "Turns software into microVM root filesystems"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write an ext4 image from a directory or a tar archive (plain, .gz, .zst).
    Mkfs(mkfs::Args),
    /// Convert a container image to an ext4 root filesystem, in one pass.
    Build(Box<build::Args>),
    /// Boot a built rootfs in a QEMU microVM; exits with the app's exit code.
    Boot(boot::Args),
    /// Serve builder.v1 (Connect, gRPC and plain HTTP) with a durable queue.
    Serve(Box<serve::ServeArgs>),
    /// Talk to a builderd server: create, status, wait, logs, download, cancel, list.
    Client(client::ClientArgs),
    /// Manage the service's tenants.
    #[command(subcommand)]
    Tenant(serve::TenantCommand),
    /// List or prune the service's blob and artifact caches.
    #[command(subcommand)]
    Cache(serve::CacheCommand),
    /// The service's operator key.
    #[command(subcommand)]
    Operator(serve::OperatorCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mkfs(args) => mkfs::run(args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Build(args) => build::run(*args),
        Command::Boot(args) => boot::run(args),
        Command::Serve(args) => serve::serve(*args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Client(args) => client::run(args),
        Command::Tenant(cmd) => serve::tenant(cmd).map(|()| std::process::ExitCode::SUCCESS),
        Command::Cache(cmd) => serve::cache(cmd).map(|()| std::process::ExitCode::SUCCESS),
        Command::Operator(cmd) => serve::operator(cmd).map(|()| std::process::ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("builderd: error: {}", builderd_build::message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
