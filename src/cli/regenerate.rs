//! `retrace eval regenerate`: counterfactual regeneration (Serrà et al.'s protocol, see
//! `retrace::eval::regenerate`): retrain without each method's top-k of the target samples,
//! generate them again with the same seeds, classes and guidance, and print how much they
//! changed against random removal.

use anyhow::Result;
use clap::Args;

use retrace::device::ComputeDevice;
use retrace::eval::regenerate::{RegenerationOutcome, RegenerationPlan, RegenerationReport, RegenerationRow};
use retrace::eval::{QueryHalf, QueryKind};
use retrace::jobs::JobContext;

use super::eval::{RetrainingArgs, shard_done, write_section};

/// Arguments of `retrace eval regenerate`.
#[derive(Args)]
pub struct RegenerateArgs {
    /// Training images removed per target sample (the union over the targets is removed);
    /// default 2% of the training set, as Serrà et al. remove.
    #[arg(long)]
    k: Option<usize>,
    /// Methods whose top-k are removed; `random` removes k random images per target.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kfac,ekfac,trak,dtrak,das,retrac,tracin,feature-nn,pixel,class,random"
    )]
    methods: Vec<String>,
    /// Target samples: the first generated queries of the reported half (default: all of them).
    #[arg(long)]
    targets: Option<usize>,
    /// Control samples, regenerated but never attributed: the first generated queries of the
    /// development half (default: as many as there are targets).
    #[arg(long)]
    controls: Option<usize>,
    #[command(flatten)]
    retraining: RetrainingArgs,
}

/// Runs `retrace eval regenerate`.
pub fn run(args: RegenerateArgs, device: &ComputeDevice, job: &JobContext) -> Result<()> {
    let (bench, rows) = args.retraining.scoring.open_for(&args.methods, false)?;
    let generated = |half: QueryHalf| bench.truth.query_indices(QueryKind::Generated, half);
    let targets: Vec<usize> = generated(QueryHalf::Report)
        .into_iter()
        .take(args.targets.unwrap_or(usize::MAX))
        .collect();
    let controls: Vec<usize> = generated(QueryHalf::Dev)
        .into_iter()
        .take(args.controls.unwrap_or(targets.len()))
        .collect();
    let plan = RegenerationPlan {
        k: args.k.unwrap_or_else(|| (bench.data.len() / 50).max(1)),
        targets,
        controls,
        seeds: (0..args.retraining.seeds).collect(),
        rows,
        shard: args.retraining.shard,
        retraining: args.retraining.retraining,
    };
    let work = args.retraining.work_dir(&bench, "regenerate");
    let report = match retrace::eval::regenerate::regenerate(&bench, &plan, &work, &device.device, job)? {
        RegenerationOutcome::ShardDone { waiting } => return shard_done(waiting),
        RegenerationOutcome::Report(report) => *report,
    };
    job.progress.update(&Default::default());
    print_report(&report);
    if let Some(path) = &args.retraining.out {
        write_section(path, &bench, |table| table.regenerate = Some(report))?;
    }
    Ok(())
}

/// The report as tables: per measure, every method's mean change on the targets with its ratio
/// to random and AUC, and its mean change on the controls.
fn print_report(report: &RegenerationReport) {
    println!(
        "regenerated {} target and {} control samples after removing the union of each method's top {} of the targets ({} seeds; each model {})",
        report.targets.len(),
        report.controls.len(),
        report.k,
        report.seeds.len(),
        report.retraining.describe()
    );
    for (m, metric) in report.metrics.iter().enumerate() {
        match report.different_sample.get(m) {
            Some(scale) => println!("\n{metric} (between two different samples: {scale:.4})"),
            None => println!("\n{metric}"),
        }
        println!(
            "{:<22} {:>8} {:>26} {:>22} {:>22} {:>10}",
            "method", "removed", "targets [95% CI]", "÷ random", "AUC", "controls"
        );
        for row in &report.rows {
            print_row(row, m);
        }
    }
    println!("\ntargets' loss increase after retraining (relative):");
    for row in &report.rows {
        let i = &row.loss_increase;
        println!(
            "{:<22} {:+.2}% [{:+.2}%, {:+.2}%]",
            row.method,
            100.0 * i.lds,
            100.0 * i.ci95[0],
            100.0 * i.ci95[1]
        );
    }
}

fn print_row(row: &RegenerationRow, m: usize) {
    let t = &row.targets[m];
    let interval = |i: Option<&retrace::eval::lds::Interval>| {
        i.map_or("—".to_owned(), |i| {
            format!("{:.3} [{:.3}, {:.3}]", i.lds, i.ci95[0], i.ci95[1])
        })
    };
    println!(
        "{:<22} {:>8.1} {:>26} {:>22} {:>22} {:>10.4}",
        row.method,
        row.removed,
        format!("{:.4} [{:.4}, {:.4}]", t.change.lds, t.change.ci95[0], t.change.ci95[1]),
        interval(t.ratio_to_random.as_ref()),
        interval(t.auc.as_ref()),
        row.controls.get(m).map_or(f64::NAN, |c| c.change.lds)
    );
}
