//! The `nnzip` command: parse, run, map errors to exit codes. All work is in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    return_large_buffers();
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

/// The job allocates and frees buffers the size of a model's largest tensor stage after stage
/// (its float copy, quantized levels, decoded values). After each such free glibc raises its
/// mmap threshold, so the next ones come from the heap and stay resident once freed; with the
/// threshold fixed they are mapped and given back, and the peak is the largest stage's own
/// (docs/benchmarks.md, "Speed and memory").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_buffers() {
    // SAFETY: sets one glibc tunable, first thing in main, before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers() {}
