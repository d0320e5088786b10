//! The `nnzip` command: parse, run, map errors to exit codes. All work is in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if let Some(h) = cli::hint(&e) {
                eprintln!("  hint: {h}");
            }
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
