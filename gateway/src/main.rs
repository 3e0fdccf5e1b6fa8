//! The `csps` command: `csps serve` runs the gateway (DESIGN, "Command line").

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc malloc: the SIP path allocates many small short-lived strings, where
/// glibc spent ~30 % of the core task's CPU, and mimalloc hands freed pages back to the kernel
/// after a burst instead of keeping them in its arenas (see README, Benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "csps",
    version,
    about = "Teams gateway for standard SIP phones"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(csps::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("csps: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(csps::serve::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("csps: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
