//! The `builderd` command: turns software into microVM root filesystems.

mod mkfs;
mod progress;
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mkfs(args) => mkfs::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("builderd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
