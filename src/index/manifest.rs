//! The index manifest: what an index was built from and with, and which chunks are complete.

use serde::{Deserialize, Serialize};

use super::IndexError;
use crate::grad::{ProjectionConfig, TimestepPlan};

/// Version of the on-disk index layout.
pub const INDEX_FORMAT_VERSION: u32 = 1;

/// How feature values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (half the size; about 3 significant digits).
    F16,
}

impl Storage {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
    }
}

/// What an index is keyed by: building or opening with different keys is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexKey {
    /// SHA-256 of the model's weights at every indexed checkpoint, in step order.
    pub checkpoint_hashes: Vec<String>,
    /// Content hash of the training data.
    pub data_hash: String,
    /// The timestep plan.
    pub plan: TimestepPlan,
    /// The projection.
    pub projection: ProjectionConfig,
    /// (d_in, d_out) of every projected layer.
    pub layer_shapes: Vec<(usize, usize)>,
    /// Value storage.
    pub storage: Storage,
    /// What the training images' gradients differentiate: the loss, or another output
    /// function (D-TRAK's square norm); older indexes hold the loss.
    #[serde(default)]
    pub measurement: crate::diffusion::Measurement,
    /// For a latent model, SHA-256 of the autoencoder whose latents were indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae_sha256: Option<String>,
}

impl IndexKey {
    /// Human-readable list of what differs from `other` (empty when equal).
    pub fn differences(&self, other: &IndexKey) -> Vec<String> {
        let mut out = Vec::new();
        if self.checkpoint_hashes != other.checkpoint_hashes {
            out.push(format!(
                "model checkpoints ({} indexed vs {} requested, or different weights)",
                self.checkpoint_hashes.len(),
                other.checkpoint_hashes.len()
            ));
        }
        if self.data_hash != other.data_hash {
            out.push(format!(
                "training data (hash {}… vs {}…)",
                crate::files::short_hash(&self.data_hash),
                crate::files::short_hash(&other.data_hash)
            ));
        }
        if self.plan != other.plan {
            out.push(format!("timestep plan ({:?} vs {:?})", self.plan, other.plan));
        }
        if self.projection != other.projection {
            out.push(format!("projection ({:?} vs {:?})", self.projection, other.projection));
        }
        if self.layer_shapes != other.layer_shapes {
            out.push("layer set (another architecture)".to_owned());
        }
        if self.storage != other.storage {
            out.push(format!("storage ({:?} vs {:?})", self.storage, other.storage));
        }
        if self.measurement != other.measurement {
            out.push(format!(
                "measurement ({:?} vs {:?})",
                self.measurement, other.measurement
            ));
        }
        if self.vae_sha256 != other.vae_sha256 {
            out.push("autoencoder (other latents)".to_owned());
        }
        out
    }
}

/// One indexed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexedCheckpoint {
    /// Training step.
    pub step: usize,
    /// Learning rate at that step.
    pub learning_rate: f64,
    /// SHA-256 of every complete chunk file, in order (`None` while missing).
    pub chunks: Vec<Option<String>>,
    /// SHA-256 of every chunk's summary file (its compact block, [`super::summary`]), in order
    /// (`None` while missing; an index built before summaries existed has none, and gets them
    /// on its first open).
    #[serde(default)]
    pub summaries: Vec<Option<String>>,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`INDEX_FORMAT_VERSION`].
    pub format_version: u32,
    /// What the index is keyed by.
    pub key: IndexKey,
    /// Number of training images.
    pub examples: usize,
    /// Training images per chunk.
    pub chunk_size: usize,
    /// Feature width.
    pub dim: usize,
    /// Per-checkpoint progress.
    pub checkpoints: Vec<IndexedCheckpoint>,
    /// The shard of a build split over machines, which writes only its own chunks (absent in
    /// a whole index, and in the index `retrace index merge` assembles from the shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shard::Shard>,
}

/// Largest index a manifest may describe, per checkpoint (1 PB: a damaged size must not
/// overflow the arithmetic that lays out the files).
pub const MAX_BYTES_PER_CHECKPOINT: usize = 1 << 50;

impl Manifest {
    /// True when every chunk of every checkpoint is written.
    pub fn is_complete(&self) -> bool {
        self.checkpoints.iter().all(|c| c.chunks.iter().all(Option::is_some))
    }

    /// True when every chunk of every checkpoint has its summary file.
    pub fn is_summarised(&self) -> bool {
        self.checkpoints
            .iter()
            .all(|c| c.summaries.len() == c.chunks.len() && c.summaries.iter().all(Option::is_some))
    }

    /// Number of training images in chunk `k`.
    pub fn chunk_rows(&self, k: usize) -> usize {
        self.examples
            .saturating_sub(k.saturating_mul(self.chunk_size))
            .min(self.chunk_size)
    }

    /// Number of chunks per checkpoint.
    pub fn chunks_per_checkpoint(&self) -> usize {
        self.examples.div_ceil(self.chunk_size.max(1))
    }

    /// Checks every field before anything divides by, slices with or indexes by it: sizes of at
    /// least 1, one key hash and one chunk list (of the right length) per checkpoint, SHA-256
    /// digests where digests belong, a plan whose buckets fit its steps, and a shard inside its
    /// count.
    pub fn validate(&self) -> Result<(), IndexError> {
        use crate::diffusion::checkpoint::is_sha256_hex;
        let key = &self.key;
        if self.examples == 0 || self.chunk_size == 0 || self.dim == 0 {
            return Err(IndexError::Invalid(format!(
                "examples {}, chunk_size {} and dim {} must all be at least 1",
                self.examples, self.chunk_size, self.dim
            )));
        }
        if self.checkpoints.is_empty() || key.checkpoint_hashes.len() != self.checkpoints.len() {
            return Err(IndexError::Invalid(format!(
                "{} checkpoints but {} checkpoint hashes in the key",
                self.checkpoints.len(),
                key.checkpoint_hashes.len()
            )));
        }
        if !key.checkpoint_hashes.iter().all(|h| is_sha256_hex(h)) || !is_sha256_hex(&key.data_hash) {
            return Err(IndexError::Invalid(
                "a checkpoint or data hash in the key is not a SHA-256 digest".into(),
            ));
        }
        let plan = &key.plan;
        if plan.buckets == 0 || plan.draws == 0 || plan.buckets > plan.steps {
            return Err(IndexError::Invalid(format!(
                "a plan of {} buckets × {} draws over {} steps",
                plan.buckets, plan.draws, plan.steps
            )));
        }
        if key.layer_shapes.is_empty() || key.layer_shapes.iter().any(|&(i, o)| i == 0 || o == 0) {
            return Err(IndexError::Invalid(
                "the key's layer shapes are empty or hold a zero width".into(),
            ));
        }
        if key.projection.k_in == 0 || key.projection.k_out == 0 {
            return Err(IndexError::Invalid("the projection's k is 0".into()));
        }
        let bytes_per_checkpoint = plan
            .buckets
            .checked_mul(self.dim)
            .and_then(|row| row.checked_mul(key.storage.bytes()))
            .and_then(|row| row.checked_mul(self.examples));
        if bytes_per_checkpoint.is_none_or(|b| b > MAX_BYTES_PER_CHECKPOINT) {
            return Err(IndexError::Invalid(format!(
                "{} images × {} buckets × {} features do not fit an index",
                self.examples, plan.buckets, self.dim
            )));
        }
        let mut steps: Vec<usize> = self.checkpoints.iter().map(|c| c.step).collect();
        steps.sort_unstable();
        if steps.windows(2).any(|w| w[0] == w[1]) {
            return Err(IndexError::Invalid("two checkpoints share a step".into()));
        }
        let chunks = self.chunks_per_checkpoint();
        for c in &self.checkpoints {
            if c.chunks.len() != chunks || !(c.summaries.is_empty() || c.summaries.len() == chunks) {
                return Err(IndexError::Invalid(format!(
                    "checkpoint step {} lists {} chunks and {} summaries, not {chunks} ({} images in chunks of {})",
                    c.step,
                    c.chunks.len(),
                    c.summaries.len(),
                    self.examples,
                    self.chunk_size
                )));
            }
            let digests = c.chunks.iter().chain(&c.summaries).flatten();
            if !digests.clone().all(|h| is_sha256_hex(h)) {
                return Err(IndexError::Invalid(format!(
                    "checkpoint step {} lists a chunk checksum that is not a SHA-256 digest",
                    c.step
                )));
            }
            if !(c.learning_rate.is_finite() && c.learning_rate >= 0.0) {
                return Err(IndexError::Invalid(format!(
                    "checkpoint step {} has learning rate {}",
                    c.step, c.learning_rate
                )));
            }
        }
        if let Some(shard) = self.shard
            && (shard.count == 0 || shard.index >= shard.count)
        {
            return Err(IndexError::Invalid(format!("shard {} of {}", shard.index, shard.count)));
        }
        Ok(())
    }

    /// Which shard builds chunk `chunk` of checkpoint number `checkpoint`: the (checkpoint,
    /// chunk) pairs are dealt round-robin.
    pub fn owner(&self, checkpoint: usize, chunk: usize, shards: usize) -> usize {
        (checkpoint * self.chunks_per_checkpoint() + chunk) % shards
    }

    /// True when this manifest's build writes chunk `chunk` of checkpoint `checkpoint`.
    pub fn builds(&self, checkpoint: usize, chunk: usize) -> bool {
        self.shard
            .is_none_or(|s| self.owner(checkpoint, chunk, s.count) == s.index)
    }

    /// True when every chunk this manifest's build writes is written.
    pub fn is_built(&self) -> bool {
        self.checkpoints.iter().enumerate().all(|(ci, c)| {
            c.chunks
                .iter()
                .enumerate()
                .all(|(k, sha)| sha.is_some() || !self.builds(ci, k))
        })
    }
}
