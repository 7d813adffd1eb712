//! Subcommands: one file each. This is the edge of the program, where components are
//! wired together and errors become `anyhow` reports.
//!
//! Depends on: everything. Nothing depends on it except `main.rs`.

mod agent;
mod image;
mod server;

use crate::config::{Cli, Command};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => {
            init_tracing(args.debug);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if args.agent.cleanup_proxy {
                return Ok(rt.block_on(crate::proxy::cleanup())?);
            }
            rt.block_on(server::run(args))
        }
        Command::Agent(args) => {
            init_tracing(args.debug);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if args.agent.cleanup_proxy {
                return Ok(rt.block_on(crate::proxy::cleanup())?);
            }
            rt.block_on(agent::run(args))
        }
        Command::Image(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(image::run(args))
        }
    }
}

fn init_tracing(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if debug {
        "debug,sled=info,hyper=info,h2=info,rustls=info,kube=info,tower=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_env("KAJI_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
