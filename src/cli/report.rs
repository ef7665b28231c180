//! `retrace report`: render a scores file of `retrace attribute` as a self-contained HTML report or a PDF.

use std::path::PathBuf;

use anyhow::{Context, Result};

use retrace::data::{DataSpec, Dataset};

/// Render a scores file of `retrace attribute` as a self-contained HTML report or a PDF.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The JSON file `retrace attribute` wrote.
    #[arg(long)]
    pub scores: PathBuf,
    /// Output: report.html or report.pdf (the extension picks the format).
    #[arg(long)]
    pub out: PathBuf,
    /// Training data spec (default: the one recorded in the file).
    #[arg(long)]
    pub data: Option<String>,
    /// Images per side for every method.
    #[arg(long, default_value_t = 24)]
    pub top: usize,
}

/// Runs `retrace report` (on the host: no compute device is needed).
pub fn run(args: ReportArgs) -> Result<()> {
    let ReportArgs { scores, out, data, top } = args;
    retrace::report::ReportFormat::from_path(&out)?;
    let bytes = std::fs::read(&scores).with_context(|| format!("cannot read {}", scores.display()))?;
    let file = retrace::report::read_scores_file(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", scores.display()))?;
    let spec: DataSpec = data.unwrap_or_else(|| file.data.clone()).parse()?;
    let dataset = Dataset::load(&spec)?;
    let parts = retrace::report::ScoresForReport::of(&file, &dataset)
        .map_err(|e| anyhow::anyhow!("{}: {e}", scores.display()))?;
    let methods = &parts.methods;
    let input = retrace::report::ReportInput {
        query: &parts.query,
        query_description: &parts.query_description,
        region: parts.region.as_deref(),
        data: &dataset,
        methods,
        top_k: top,
        device: &file.device,
        model: &file.model,
    };
    retrace::report::write_report(&out, &input)?;
    println!(
        "wrote {} ({} methods, top {top} per side)",
        out.display(),
        methods.len()
    );
    Ok(())
}
