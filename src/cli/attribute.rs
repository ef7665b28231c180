//! `retrace attribute`: rank the training images by their influence on a query image or a generated sample.

use std::path::PathBuf;

use anyhow::Result;

use retrace::device::DeviceRequest;
use retrace::diffusion::SamplerKind;

use super::args::{ConditionArgs, IndexTarget, MethodArgs};
use super::{compute_device, terminal_job};

/// Rank the training images by their influence on a query image or a generated sample.
#[derive(clap::Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    pub target: IndexTarget,
    /// Query image (PNG/JPEG; converted to the model's channels and size).
    #[arg(long, conflicts_with = "seed")]
    pub query: Option<PathBuf>,
    /// Generate the query from the model with this seed (DDIM, 100 steps).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The class a class-conditional model generates the query for, or attributes a loaded
    /// image under; and the guidance of a generated query.
    #[command(flatten)]
    pub condition: ConditionArgs,
    /// Attribute only a region of the query: a grey image (PNG/JPEG) whose white pixels mark it
    /// (grey levels weight pixels; resized to the model's size).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Methods, comma-separated (`retrace methods` lists them; ensembles as ensemble:A+B).
    #[arg(long, default_value = "retrac,tracin,kfac,ekfac,pixel", value_delimiter = ',', value_parser = parse_method)]
    pub method: Vec<String>,
    #[command(flatten)]
    pub parameters: MethodArgs,
    /// How many top images to print per method.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Output file: .json or .csv.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `retrace attribute` on the requested compute device.
pub fn run(args: AttributeArgs, device: Option<DeviceRequest>) -> Result<()> {
    let AttributeArgs {
        target,
        query,
        seed,
        condition,
        mask,
        method,
        parameters,
        top,
        out,
    } = args;
    let dev = compute_device(device)?;
    let (model, data, settings) = target.open()?;
    let [channels, size, _] = model.info.image_shape();
    let (job, bar) = terminal_job()?;
    let class = condition.condition(&model.info)?;
    let q = match (query, seed) {
        (Some(path), _) => retrace::attribution::Query {
            condition: class,
            ..retrace::attribution::load_query_image(&path, channels, size)?
        },
        (None, seed) => {
            let config = condition.sampler(&model.info, SamplerKind::Ddim, 100)?;
            retrace::attribution::query::generate_query(
                &model,
                seed.unwrap_or(0),
                class,
                &config,
                &dev.device,
                &job,
                |_, _, _| {},
            )?
        }
    };
    let mut q = q;
    if let Some(path) = mask {
        q.mask = Some(retrace::attribution::query::load_region(&path, size)?);
    }
    eprintln!("query: {}", q.description);
    let request = retrace::attribution::MethodSettings {
        methods: method,
        parameters: parameters.parameters()?,
    };
    let scores = retrace::attribution::attribute(&model, &data, &q, &request, &settings, &dev.device, &job);
    bar.finish();
    let scores = scores?;
    let file = retrace::report::scores_file::scores_file(&model.root, &data, &q, seed, &dev.name, &scores);
    retrace::report::scores_file::write_scores_file(&out, &file)?;
    for m in &file.methods {
        let best: Vec<String> = m
            .ranking
            .iter()
            .take(top)
            .map(|e| format!("#{} {} ({:.3e})", e.id, e.class, e.total))
            .collect();
        println!("{:>7}: {}", m.method, best.join(", "));
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// A method name the registry knows (`--method`).
pub(crate) fn parse_method(name: &str) -> Result<String> {
    Ok(retrace::attribution::registry::lookup(name)?.name())
}
