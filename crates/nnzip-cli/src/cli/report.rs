//! `nnzip report REPORT.json`: renders a saved JSON report (of compress, simplify or bench) again,
//! as text on stdout, as an HTML page with `--html`, or as JSON with `--json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use nnzip::report::saved::Saved;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The JSON report (what `nnzip compress|simplify|bench --json` printed).
    pub report: PathBuf,
    /// Write the self-contained HTML page here (inline SVG and CSS, no script).
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// Print the report as JSON again (as read back: the fields this version knows).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let s = std::fs::read_to_string(&a.report)
        .map_err(nnzip::report::saved::ReportError::Read)
        .with_context(|| format!("cannot read {}", a.report.display()))?;
    let r = Saved::from_json(&s).with_context(|| format!("cannot read {}", a.report.display()))?;
    if let Some(h) = &a.html {
        nnzip::pipeline::write_bytes(h, r.to_html().as_bytes())
            .with_context(|| format!("cannot write {}", h.display()))?;
    }
    if a.json {
        super::print_json(&r)
    } else {
        print!("{}", r.to_text());
        Ok(())
    }
}
