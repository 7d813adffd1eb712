//! The `kaji` executable: parses the command line, sets up logging and runs the chosen
//! subcommand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match kaji::config::parse() {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("kaji: {err}");
            return ExitCode::from(2);
        }
    };
    match kaji::cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kaji: {err:#}");
            ExitCode::FAILURE
        }
    }
}
