//! The `retrace` command: train, sample, inspect and benchmark diffusion models; with no
//! subcommand, the desktop viewer on the bundled default.

use anyhow::Result;
use clap::{Parser, Subcommand};

use retrace::device::DeviceRequest;

mod cli;

#[derive(Parser)]
#[command(
    name = "retrace",
    version,
    about = "Which training images made a diffusion model generate this?"
)]
struct Cli {
    /// Compute device: auto (GPU if any, else CPU), cpu (flex) or wgpu. Overrides RETRACE_DEVICE.
    #[arg(long, global = true)]
    device: Option<DeviceRequest>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a DDPM on a dataset, saving checkpoints (Ctrl-C saves one and stops).
    Train(cli::train::TrainArgs),
    /// Generate images from a trained model (one PNG, a grid when several seeds are given).
    Sample(cli::sample::SampleArgs),
    /// Build (or finish) the index of projected training-gradient features.
    Index(cli::index::IndexArgs),
    /// Rank the training images by their influence on a query image or a generated sample.
    Attribute(cli::attribute::AttributeArgs),
    /// Render a scores file of `retrace attribute` as a self-contained HTML report or a PDF.
    Report(cli::report::ReportArgs),
    /// Open the desktop viewer on a model and its training data.
    Gui(cli::gui::GuiArgs),
    /// Describe a model directory (retrace's or diffusers') or a dataset spec.
    Info(cli::info::InfoArgs),
    /// Write a model's weights in another framework's layout (a diffusers pipeline).
    Export(cli::export::ExportArgs),
    /// List the attribution methods, what they need and their parameters.
    Methods(cli::methods::MethodsArgs),
    /// Evaluate attribution methods: build an LDS ground truth, merge its shards, score methods.
    Eval {
        #[command(subcommand)]
        command: cli::eval::EvalCommand,
    },
    /// Measure plain forward+backward throughput of a model on the chosen device.
    Bench(cli::bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Gui(cli::gui::GuiArgs::default()));
    match command {
        Command::Train(args) => cli::train::run(args, cli.device),
        Command::Sample(args) => cli::sample::run(args, cli.device),
        Command::Index(args) => cli::index::run(args, cli.device),
        Command::Attribute(args) => cli::attribute::run(args, cli.device),
        Command::Report(args) => cli::report::run(args),
        Command::Gui(args) => cli::gui::run(args, cli.device),
        Command::Info(args) => cli::info::run(args),
        Command::Export(args) => cli::export::run(args, cli.device),
        Command::Methods(args) => cli::methods::run(args),
        Command::Eval { command } => {
            let dev = cli::compute_device(cli.device)?;
            let (job, bar) = cli::terminal_job()?;
            let outcome = cli::eval::run(command, &dev, &job);
            bar.finish();
            outcome
        }
        Command::Bench(args) => cli::bench::run(args, cli.device),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_has_no_clashing_arguments() {
        super::Cli::command().debug_assert();
        // Flattened argument groups share one namespace of ids: a clash only shows in parsing.
        for args in [
            &["retrace", "eval", "remove-topk", "--k", "20", "--projection-k", "16"][..],
            &["retrace", "eval", "overlap", "--k", "5", "--projection-k", "16"],
            &["retrace", "eval", "lds", "--projection-k", "16", "--draws", "4"],
            &["retrace", "index", "--projection-k", "16", "--buckets", "5"],
            &[
                "retrace",
                "attribute",
                "--out",
                "a.json",
                "--measurement",
                "sqnorm",
                "--curvature",
                "ef",
                "--sharing",
                "reduce",
                "--checkpoints",
                "all",
            ],
            &["retrace", "sample", "--out", "s.png", "--sampler", "ddpm"],
        ] {
            if let Err(e) = <super::Cli as clap::Parser>::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }
}
