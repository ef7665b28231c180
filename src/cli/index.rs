//! `retrace index`: build (or finish) the index of projected training-gradient features, on one
//! machine or as shards on several (`--shard i/N`, then `retrace index merge`).

use anyhow::Result;
use retrace::jobs::Cancellable;

use retrace::device::DeviceRequest;
use retrace::index::shards::merge_shards;
use retrace::index::{Index, Manifest, Verification};
use retrace::shard::Shard;

use super::args::IndexTarget;
use super::{compute_device, terminal_job};

/// Build (or finish) the index of projected training-gradient features.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub action: Option<IndexAction>,
    #[command(flatten)]
    pub target: IndexTarget,
    /// Build only this shard, `i/N` (0-based), of an index split over N machines: it writes
    /// every N-th chunk file into INDEX/shard-i-of-N/. Run all N (a Slurm job array, a
    /// Kubernetes Indexed Job; docs/cluster/), then `retrace index merge` with the same options.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Hash every chunk file of the index now. (Opening an index hashes its files only the
    /// first time and whenever one changed size or modification time since; this catches
    /// damage that kept both.)
    #[arg(long, conflicts_with = "shard")]
    pub verify: bool,
}

/// What else `retrace index` does.
#[derive(clap::Subcommand)]
pub enum IndexAction {
    /// Join the shards built with `--shard i/N` into the index (the same options as the shards
    /// name the same index directory); the result is byte for byte a one-machine build.
    Merge {
        #[command(flatten)]
        target: IndexTarget,
    },
}

/// Runs `retrace index` on the requested compute device.
pub fn run(args: IndexArgs, device: Option<DeviceRequest>) -> Result<()> {
    if let Some(IndexAction::Merge { target }) = args.action {
        let dir = target.index_dir()?;
        let outcome = merge_shards(&dir)?;
        println!(
            "merged {} shards ({} chunk files) into {}",
            outcome.shards,
            outcome.chunks,
            dir.display()
        );
        describe(&outcome.manifest);
        return Ok(());
    }
    let dev = compute_device(device)?;
    let (model, data, settings) = args.target.open()?;
    let (job, bar) = terminal_job()?;
    let started = std::time::Instant::now();
    if let Some(shard) = args.shard {
        let manifest = settings.build_shard(&model, &data, shard, &dev.device, &job);
        bar.finish();
        match manifest {
            Err(e) if e.is_cancelled() => {
                println!("stopped; run the same command again to resume from the last complete chunk")
            }
            Err(e) => return Err(e.into()),
            Ok(_) => println!(
                "shard {shard} of {} done in {:.1} s; once every shard is, run `retrace index merge` with the same options",
                settings.dir.display(),
                started.elapsed().as_secs_f64()
            ),
        }
        return Ok(());
    }
    let index = match settings.ensure(&model, &data, &dev.device, &job) {
        Ok(index) => index,
        Err(e) if e.is_cancelled() => {
            bar.finish();
            println!("stopped; run the same command again to resume from the last complete chunk");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let ready = started.elapsed().as_secs_f64();
    let verified = args
        .verify
        .then(|| {
            let started = std::time::Instant::now();
            Index::open_with(&index.dir, &index.manifest.key, Verification::Full, &dev.device, &job)
                .map(|_| started.elapsed().as_secs_f64())
        })
        .transpose()?;
    bar.finish();
    println!("index {} ready in {ready:.1} s", index.dir.display());
    describe(&index.manifest);
    if let Some(seconds) = verified {
        println!("every chunk's checksum verified in {seconds:.1} s");
    }
    Ok(())
}

/// Prints an index's size and shape.
fn describe(m: &Manifest) {
    let per_image = m.key.plan.buckets * m.dim * m.key.storage.bytes() * m.checkpoints.len();
    println!(
        "{} images × {} buckets × {} features × {} checkpoint(s), {} storage: {:.1} KB per indexed image",
        m.examples,
        m.key.plan.buckets,
        m.dim,
        m.checkpoints.len(),
        format!("{:?}", m.key.storage).to_lowercase(),
        per_image as f64 / 1024.0
    );
}
