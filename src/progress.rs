//! Progress of long library jobs. The library says which stage it is in and how far along; the
//! caller decides how to show it (the CLI draws a bar on a terminal and logs one line per stage
//! otherwise). It is also where a job learns that it should stop: [`Progress::cancelled`] is
//! checked between units of work, so an interrupted job unwinds and its temp files go with it.

/// Receives a job's progress.
pub trait Progress {
    /// A new stage begins.
    fn stage(&mut self, name: &str);
    /// Within the current stage: `done` of `total` units, with a short note.
    fn step(&mut self, done: u64, total: u64, note: &str);
    /// True once the job should stop (Ctrl-C); jobs check it between units of work.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Shows nothing and never cancels.
pub struct Silent;

impl Progress for Silent {
    fn stage(&mut self, _name: &str) {}
    fn step(&mut self, _done: u64, _total: u64, _note: &str) {}
}

/// Records stage names (tests).
#[derive(Debug, Default)]
pub struct Recorder {
    pub stages: Vec<String>,
    pub steps: usize,
}

impl Progress for Recorder {
    fn stage(&mut self, name: &str) {
        self.stages.push(name.to_string());
    }
    fn step(&mut self, _done: u64, _total: u64, _note: &str) {
        self.steps += 1;
    }
}
