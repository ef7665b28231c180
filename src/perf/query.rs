//! Query latency against a synthetic index of a real model's feature width: what one query
//! costs every index-based method at a dataset size no bundled dataset has, with the page cache
//! cold (the files evicted first) and warm, beside the floor — reading the compact block once.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};

use super::PerfError;
use crate::attribution::AttributionError;
use crate::attribution::kfac::preconditioned_scores;
use crate::attribution::products::trak_kernel::TrakKernel;
use crate::attribution::retrac::retrac_scores;
use crate::attribution::{CheckpointFeatures, GradientInputs, TrainFeatures, bucket_dot_products};
use crate::diffusion::noise::{gaussian, stream};
use crate::files::{FileError, at};
use crate::grad::{Features, ProjectionConfig, Projector, TimestepPlan};
use crate::index::{INDEX_FORMAT_VERSION, Index, IndexKey, IndexedCheckpoint, Manifest, Storage, write_index};

/// Warm runs per method; their median is reported.
const WARM_RUNS: usize = 3;

/// One method's query latency.
#[derive(Clone, Debug)]
pub struct MethodLatency {
    /// Registry name.
    pub method: String,
    /// Seconds with the index's files evicted from the page cache first (`None` where this
    /// platform cannot evict them).
    pub cold_seconds: Option<f64>,
    /// Median seconds of three runs after the cold one.
    pub warm_seconds: f64,
}

/// Query latency against a synthetic index.
#[derive(Clone, Debug)]
pub struct QueryLatency {
    /// Training images in the synthetic index.
    pub images: usize,
    /// Timestep buckets.
    pub buckets: usize,
    /// Features per image and bucket.
    pub dim: usize,
    /// Bytes of the index's files on disk (chunks and compact block).
    pub index_bytes: u64,
    /// Bytes of the compact block one ranking method reads per image (one of its two parts).
    pub compact_bytes_per_image: usize,
    /// Opening the index the first time (reading the manifest and verifying every checksum).
    pub open_seconds: f64,
    /// Opening it again: the manifest, file sizes and times against the verification stamp.
    pub reopen_seconds: f64,
    /// Reading one part of the compact block once, warm: the floor of a ranking method.
    pub floor_seconds: f64,
    /// Every index-based method's scoring of one query.
    pub methods: Vec<MethodLatency>,
}

/// Writes a synthetic index of `images` images (features of the given layer shapes and
/// projection, random values, `storage`), opens it, and times scoring one query with every
/// method that reads it — ReTrac, K-FAC's scoring step and TRAK's product from the compact
/// block, TracIn and `retrac-bucket` from every bucket — cold and warm. What does not depend on
/// the index size (the query's gradients, K-FAC's preconditioning, TRAK's one-off kernel fit,
/// here a random kernel of the right shape) is not included. The index lives in a temporary
/// directory removed afterwards.
pub fn synthetic_query_latency(
    images: usize,
    buckets: usize,
    layer_shapes: &[(usize, usize)],
    storage: Storage,
    device: &Device,
) -> Result<QueryLatency, PerfError> {
    let dir = std::env::temp_dir().join(format!("retrace-bench-index-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = measure(&dir, images, buckets, layer_shapes, storage, device);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The manifest of an index of random features that no model made: one checkpoint of
/// `images` images in chunks of `chunk_size`, `buckets` buckets of the projection of
/// `layer_shapes`, with digests of fixed strings for the checkpoint and the data. What
/// `retrace bench` and the tests build synthetic indexes from (with [`write_index`]).
pub fn synthetic_manifest(
    projection: ProjectionConfig,
    layer_shapes: &[(usize, usize)],
    buckets: usize,
    storage: Storage,
    images: usize,
    chunk_size: usize,
    device: &Device,
) -> Result<Manifest, PerfError> {
    let key = IndexKey {
        checkpoint_hashes: vec![crate::files::sha256(b"synthetic checkpoint")],
        data_hash: crate::files::sha256(b"synthetic data"),
        plan: TimestepPlan::new(1000, buckets, 1, 0)?,
        projection,
        layer_shapes: layer_shapes.to_vec(),
        storage,
        measurement: crate::diffusion::Measurement::Loss,
        vae_sha256: None,
    };
    Ok(Manifest {
        format_version: INDEX_FORMAT_VERSION,
        key,
        examples: images,
        chunk_size,
        dim: Projector::new(projection, layer_shapes, device).dim(),
        checkpoints: vec![IndexedCheckpoint {
            step: 1,
            learning_rate: 1e-3,
            chunks: Vec::new(),
            summaries: Vec::new(),
        }],
        shard: None,
    })
}

fn measure(
    dir: &Path,
    images: usize,
    buckets: usize,
    layer_shapes: &[(usize, usize)],
    storage: Storage,
    device: &Device,
) -> Result<QueryLatency, PerfError> {
    let manifest = synthetic_manifest(
        ProjectionConfig::default(),
        layer_shapes,
        buckets,
        storage,
        images,
        1000,
        device,
    )?;
    let (key, dim) = (manifest.key.clone(), manifest.dim);
    // A block of random values, cycled: the values do not change the work.
    let pool = gaussian(&mut stream("bench-features", &[0]), 1 << 20);
    let row = buckets * dim;
    write_index(dir, manifest, |_, start, end| {
        (start * row..end * row)
            .map(|i| pool[(i * 7919) % pool.len()])
            .collect()
    })?;
    let index_bytes = files(dir)?.iter().map(|(_, len)| len).sum();
    let start = Instant::now();
    let index = Index::open(dir, &key, device);
    let open_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let index = index.and_then(|_| Index::open(dir, &key, device));
    let reopen_seconds = start.elapsed().as_secs_f64();
    let index = index?;
    let query = Features {
        values: pool[..row].to_vec(),
        examples: 1,
        buckets,
        dim,
    };
    let inputs_with = |index: Index| GradientInputs {
        checkpoints: vec![CheckpointFeatures {
            step: 1,
            weight: 1e-3,
            train: TrainFeatures::Indexed {
                index: Arc::new(index),
                checkpoint: 0,
            },
            query: query.clone(),
        }],
        plan: key.plan.clone(),
        ids: (0..images as u64).collect(),
        labels: vec![0; images],
        parameters: serde_json::json!({}),
        device: device.clone(),
    };
    let kfac_query = Tensor::<2>::from_data(TensorData::new(query.values.clone(), [buckets, dim]), device);
    // TRAK's weighted features live in memory (fitted once per index): cold equals warm.
    let trak = TrakKernel {
        weighted: (0..images * dim).map(|i| pool[(i * 104_729) % pool.len()]).collect(),
        rows: images,
        dim,
        lambda: 1.0,
    };
    type Scorer<'s> = Box<dyn Fn(&GradientInputs) -> Result<Vec<f32>, AttributionError> + 's>;
    let methods: [(&str, Scorer); 5] = [
        ("retrac", Box::new(retrac_scores)),
        (
            "kfac",
            Box::new(|inputs| preconditioned_scores(inputs, kfac_query.clone())),
        ),
        ("trak", Box::new(|_| trak.scores(&query.values, buckets, device))),
        ("tracin", Box::new(|inputs| bucket_dot_products(inputs, false))),
        ("retrac-bucket", Box::new(|inputs| bucket_dot_products(inputs, true))),
    ];
    let mut timings = Vec::new();
    for (name, score) in methods {
        // A freshly opened index for every method: pages an earlier method mapped stay in its
        // page tables, and the kernel does not evict mapped pages.
        let evicted = evict(dir)?;
        let inputs = inputs_with(Index::open(dir, &key, device)?);
        let cold_seconds = if evicted {
            let start = Instant::now();
            score(&inputs)?;
            Some(start.elapsed().as_secs_f64())
        } else {
            None
        };
        let mut warm = Vec::with_capacity(WARM_RUNS);
        for _ in 0..WARM_RUNS {
            let start = Instant::now();
            score(&inputs)?;
            warm.push(start.elapsed().as_secs_f64());
        }
        warm.sort_by(f64::total_cmp);
        timings.push(MethodLatency {
            method: name.to_owned(),
            cold_seconds,
            warm_seconds: warm[WARM_RUNS / 2],
        });
    }
    let floor_seconds = read_floor(dir, &index)?;
    Ok(QueryLatency {
        images,
        buckets,
        dim,
        index_bytes,
        compact_bytes_per_image: dim * storage.bytes(),
        open_seconds,
        reopen_seconds,
        floor_seconds,
        methods: timings,
    })
}

/// (path, length) of every file in `dir`.
fn files(dir: &Path) -> Result<Vec<(std::path::PathBuf, u64)>, FileError> {
    std::fs::read_dir(dir)
        .map_err(at(dir))?
        .map(|e| {
            let path = e.map_err(at(dir))?.path();
            let len = path.metadata().map_err(at(&path))?.len();
            Ok((path, len))
        })
        .collect()
}

/// Maps `path` for reading.
fn map_file(path: &Path) -> Result<memmap2::Mmap, FileError> {
    let file = std::fs::File::open(path).map_err(at(path))?;
    // SAFETY: the synthetic index is written once and not modified while it is read.
    unsafe { memmap2::Mmap::map(&file) }.map_err(at(path))
}

/// Seconds to read the mean unit-normalised part of the compact block once with the page
/// cache warm and the files mapped (read once before timing), summing its bytes in parallel:
/// the memory-bandwidth floor of a method that ranks from the compact block.
fn read_floor(dir: &Path, index: &Index) -> Result<f64, PerfError> {
    use rayon::prelude::*;
    let m = &index.manifest;
    let part = m.dim * m.key.storage.bytes();
    let maps = files(dir)?
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().ends_with(".summary.bin"))
        .map(|(path, _)| map_file(&path))
        .collect::<Result<Vec<_>, FileError>>()?;
    let sum = || {
        maps.iter().fold(0u64, |total, map| {
            let rows = map.len() / (2 * part + m.key.plan.buckets * 4);
            let words = map[rows * part..2 * rows * part]
                .par_chunks(1 << 16)
                .map(|c| {
                    c.chunks_exact(8).fold(0u64, |acc, w| {
                        acc.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or_default()))
                    })
                })
                .reduce(|| 0, u64::wrapping_add);
            total.wrapping_add(words)
        })
    };
    std::hint::black_box(sum());
    let start = Instant::now();
    std::hint::black_box(sum());
    Ok(start.elapsed().as_secs_f64())
}

/// Asks the kernel to drop `dir`'s files from the page cache, so the next read comes from the
/// disk; false where that is not possible here.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn evict(dir: &Path) -> Result<bool, PerfError> {
    use std::os::fd::AsRawFd;
    for (path, _) in files(dir)? {
        let file = std::fs::File::open(&path).map_err(at(&path))?;
        // SAFETY: a valid open descriptor; the call only advises the kernel about its pages.
        let status = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if status != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Page-cache eviction is not available on this platform.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn evict(_dir: &Path) -> Result<bool, PerfError> {
    Ok(false)
}

/// One query against a compact block held in GPU memory.
#[derive(Clone, Debug)]
pub struct ResidentQueryLatency {
    /// Training images (rows of the block).
    pub images: usize,
    /// Features per row.
    pub dim: usize,
    /// Bytes of the block on the device (f16).
    pub bytes: usize,
    /// Seconds to upload the block.
    pub upload_seconds: f64,
    /// Median seconds of one query's scoring, read-back of its scores included.
    pub seconds: f64,
    /// The block's bytes over those seconds (GB/s).
    pub gigabytes_per_second: f64,
}

/// Times one query (one vector) against a compact block of `images` f16 rows of `dim` random
/// features held in the memory of `device`, a CubeCL runtime: what a ranking from the compact
/// block costs once the index is on the GPU (the device cache keeps it there after the first
/// query), with no index files at all, so that a million images fit where their whole index
/// would not. The scores of the first rows are checked against the host's.
pub fn resident_compact_query(images: usize, dim: usize, device: &Device) -> Result<ResidentQueryLatency, PerfError> {
    use crate::index::gpu::{f32_bytes, gpu_client, launch_bytes, launch_summary_dots, read_f32, upload};
    let client = gpu_client(device).ok_or_else(|| {
        PerfError::Invalid("a resident compact-block query needs a GPU runtime (wgpu, vulkan, cuda)".into())
    })?;
    let pool = gaussian(&mut stream("bench-resident", &[0]), 1 << 16);
    let rows_per_block = (launch_bytes(&client) / (2 * dim)).clamp(1, images.max(1));
    // One block of f16 rows, uploaded as often as the index needs: the values do not change
    // the work.
    let values: Vec<half::f16> = (0..rows_per_block * dim)
        .map(|i| half::f16::from_f32(pool[(i * 7919) % pool.len()]))
        .collect();
    let block_bytes: &[u8] = bytemuck::cast_slice(&values);
    let query: Vec<f32> = pool[..dim].to_vec();
    let start = Instant::now();
    let blocks: Vec<(usize, cubecl::server::Handle)> = (0..images)
        .step_by(rows_per_block)
        .map(|first| {
            let n = rows_per_block.min(images - first);
            (n, upload(&client, &block_bytes[..n * dim * 2]))
        })
        .collect();
    let query_handle = upload(&client, &f32_bytes(&query));
    let _ = client.read(vec![query_handle.clone()]);
    let upload_seconds = start.elapsed().as_secs_f64();
    let score = || -> Result<Vec<f32>, PerfError> {
        let outputs = blocks
            .iter()
            .map(|(n, block)| launch_summary_dots(&client, block, *n, dim, &query_handle, 1, true))
            .collect();
        Ok(read_f32(&client, outputs)?.concat())
    };
    let scores = score()?;
    if scores.len() != images {
        return Err(PerfError::Invalid(format!(
            "{} scores for {images} images",
            scores.len()
        )));
    }
    for (r, &on_device) in scores.iter().take(8).enumerate() {
        let on_host: f32 = (0..dim).map(|d| values[r * dim + d].to_f32() * query[d]).sum();
        if (on_device - on_host).abs() > 1e-3 * on_host.abs().max(1.0) {
            return Err(PerfError::Invalid(format!(
                "row {r}: the device scored {on_device}, the host {on_host}"
            )));
        }
    }
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            score().map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<_, _>>()?;
    runs.sort_by(f64::total_cmp);
    let seconds = runs[runs.len() / 2];
    let bytes = images * dim * 2;
    Ok(ResidentQueryLatency {
        images,
        dim,
        bytes,
        upload_seconds,
        seconds,
        gigabytes_per_second: bytes as f64 / seconds / 1e9,
    })
}
