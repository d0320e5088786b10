//! Progress on stderr: a bar on a terminal, one line per stage otherwise (logs, CI), nothing
//! with `--quiet`. Ctrl-C sets a flag the library checks between units of work, so the job
//! unwinds and removes its temp files; nothing is written until a job has finished.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nnzip::progress::Progress;

pub struct CliProgress {
    bar: Option<indicatif::ProgressBar>,
    log: bool,
    start: Instant,
    stage: String,
    interrupted: Arc<AtomicBool>,
}

impl CliProgress {
    pub fn new(quiet: bool) -> CliProgress {
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        // A second Ctrl-C ends the process at once (the first one waits for the current unit).
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping after the current step (Ctrl-C again to quit now)");
        });
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed:>4} {prefix:.bold} {bar:25} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        CliProgress {
            bar,
            log: !quiet && !terminal,
            start: Instant::now(),
            stage: String::new(),
            interrupted,
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for CliProgress {
    fn stage(&mut self, name: &str) {
        self.stage = name.to_string();
        if let Some(b) = &self.bar {
            b.set_prefix(name.to_string());
            b.set_length(0);
            b.set_position(0);
            b.set_message("");
        }
        if self.log {
            eprintln!(
                "nnzip: [{:7.1} s] {name}",
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    fn step(&mut self, done: u64, total: u64, note: &str) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            b.set_message(note.to_string());
        }
    }

    fn cancelled(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}
