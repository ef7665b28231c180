//! `retrace report`: render a scores file of `retrace attribute` as a self-contained HTML report or a PDF.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

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
    retrace::report::ReportFormat::from_path(&out).map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(&scores).with_context(|| format!("cannot read {}", scores.display()))?;
    let file: retrace::attribution::scores::AttributionFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a scores file of retrace attribute", scores.display()))?;
    let spec: DataSpec = data.unwrap_or_else(|| file.data.clone()).parse()?;
    let dataset = Dataset::load(&spec)?;
    let methods = file
        .methods
        .iter()
        .map(|m| m.to_scores(&dataset))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let uri = file.query["image"]
        .as_str()
        .context("the scores file holds no query image (written by an older retrace?)")?;
    let (query, shape) = retrace::report::decode_png_data_uri(uri, dataset.channels).map_err(anyhow::Error::msg)?;
    if shape != [dataset.channels, dataset.height, dataset.width] {
        bail!(
            "the query image is {shape:?} but the training images are {}×{}",
            dataset.height,
            dataset.width
        );
    }
    let region: Option<Vec<f32>> = match file.query.get("region") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let region: Vec<f32> =
                serde_json::from_value(v.clone()).context("the scores file's query region is not a list of weights")?;
            retrace::attribution::run::check_region(&region, dataset.height, dataset.width)
                .map_err(anyhow::Error::msg)?;
            Some(region)
        }
    };
    let input = retrace::report::ReportInput {
        query: &query,
        query_description: file.query["description"].as_str().unwrap_or(""),
        region: region.as_deref(),
        data: &dataset,
        methods: &methods,
        top_k: top,
        device: &file.device,
        model: &file.model,
    };
    retrace::report::write_report(&out, &input).map_err(anyhow::Error::msg)?;
    println!(
        "wrote {} ({} methods, top {top} per side)",
        out.display(),
        methods.len()
    );
    Ok(())
}
