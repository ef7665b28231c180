//! The latent cache: every training image's latent distribution under an autoencoder, written
//! once and read by training, the index, the curvature fit and MUCS.
//!
//! Layout: `<cache root>/latents-<data hash>-<vae hash>/chunk-KKKKK.safetensors` (12 hex digits
//! of each hash), each chunk holding [`CHUNK`] images (the last fewer) as two f32 tensors
//! `mean` and `log_variance` [n, C, h, w] in model units, with the full hashes, the chunk's
//! first image and its count in the metadata. Chunks are written atomically as they are
//! encoded, so a killed or cancelled encoding resumes from the chunks on disk; a damaged chunk is
//! encoded again (the cache is derived data: nothing is lost by rebuilding it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::{LatentDistributions, LatentSpace, VAE_DIR, vae_sha256};
use crate::data::Dataset;
use crate::diffusion::{ModelDir, ModelError};
use crate::files::{FileError, write_atomic};
use crate::jobs::JobContext;

/// Images per cache chunk (the unit of resumption).
pub const CHUNK: usize = 256;

/// Why the latents of a training set are not available.
#[derive(Debug, thiserror::Error)]
pub enum LatentError {
    /// The autoencoder, or the data it should encode, cannot be used.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A cache file could not be written or read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The job was cancelled (the chunks written stay; a later run resumes).
    #[error("cancelled")]
    Cancelled,
}

crate::jobs::cancellable_error!(LatentError {});

/// Why a cache chunk's bytes are not the latents its key asks for (the cache then encodes the
/// chunk again: it is derived data).
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The bytes are not a safetensors file.
    #[error("not a readable safetensors file ({0})")]
    Unreadable(#[from] safetensors::SafeTensorError),
    /// A metadata field names other data, another autoencoder or other images.
    #[error("its {field} is not {expected}")]
    Metadata {
        /// The metadata field.
        field: &'static str,
        /// What the key asks for.
        expected: String,
    },
    /// A tensor is absent.
    #[error("{name}: {source}")]
    Tensor {
        /// The tensor's name.
        name: &'static str,
        /// Why it cannot be read.
        source: safetensors::SafeTensorError,
    },
    /// A tensor has another dtype or shape.
    #[error("{name} is not f32 of shape {expected:?}")]
    Shape {
        /// The tensor's name.
        name: &'static str,
        /// The shape the key asks for.
        expected: [usize; 4],
    },
    /// A tensor holds NaN or ±∞.
    #[error("{name} holds a non-finite value at {at}")]
    NonFinite {
        /// The tensor's name.
        name: &'static str,
        /// The first non-finite element.
        at: usize,
    },
}

/// What a cache chunk must hold: which data and autoencoder, which images, what shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkKey {
    /// Content hash of the training data.
    pub data_hash: String,
    /// SHA-256 of the autoencoder's weights.
    pub vae_sha256: String,
    /// Index of the chunk's first image.
    pub first: usize,
    /// Images in the chunk.
    pub count: usize,
    /// C, h, w of every latent.
    pub shape: [usize; 3],
}

/// The cache directory of `data_hash` under the autoencoder `vae_sha256`.
pub fn cache_dir(data_hash: &str, vae_sha256: &str) -> PathBuf {
    crate::files::cache_root().join(format!(
        "latents-{}-{}",
        crate::files::short_hash(data_hash),
        crate::files::short_hash(vae_sha256)
    ))
}

fn chunk_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("chunk-{k:05}.safetensors"))
}

/// The bytes of a cache chunk.
pub fn chunk_bytes(key: &ChunkKey, latents: &LatentDistributions) -> Vec<u8> {
    let shape = vec![key.count, key.shape[0], key.shape[1], key.shape[2]];
    let as_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (mean, log_variance) = (as_bytes(&latents.mean), as_bytes(&latents.log_variance));
    let metadata = HashMap::from([
        ("data_hash".to_owned(), key.data_hash.clone()),
        ("vae_sha256".to_owned(), key.vae_sha256.clone()),
        ("first".to_owned(), key.first.to_string()),
        ("count".to_owned(), key.count.to_string()),
    ]);
    let views = [("mean", &mean), ("log_variance", &log_variance)].map(|(name, bytes)| {
        (
            name,
            TensorView::new(Dtype::F32, shape.clone(), bytes).expect("sizes match the shape"),
        )
    });
    crate::files::canonical_safetensors(safetensors::serialize(views, Some(metadata)).expect("f32 tensors serialise"))
}

/// Reads a cache chunk, checking it against `key`: the metadata, both tensors' dtype and shape,
/// and finite values. The error says what is wrong.
pub fn read_chunk(bytes: &[u8], key: &ChunkKey) -> Result<LatentDistributions, ChunkError> {
    let st = SafeTensors::deserialize(bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    for (field, expected) in [
        ("data_hash", key.data_hash.clone()),
        ("vae_sha256", key.vae_sha256.clone()),
        ("first", key.first.to_string()),
        ("count", key.count.to_string()),
    ] {
        if meta.get(field) != Some(&expected) {
            return Err(ChunkError::Metadata { field, expected });
        }
    }
    let shape = [key.count, key.shape[0], key.shape[1], key.shape[2]];
    let read = |name: &'static str| -> Result<Vec<f32>, ChunkError> {
        let view = st.tensor(name).map_err(|source| ChunkError::Tensor { name, source })?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(ChunkError::Shape { name, expected: shape });
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        match values.iter().position(|v| !v.is_finite()) {
            Some(at) => Err(ChunkError::NonFinite { name, at }),
            None => Ok(values),
        }
    };
    Ok(LatentDistributions {
        vae_sha256: key.vae_sha256.clone(),
        shape: key.shape,
        mean: read("mean")?,
        log_variance: read("log_variance")?,
    })
}

/// The latent distributions of every image of `data` under the autoencoder of `model` (from
/// the cache, encoding what it lacks), or `None` for a pixel-space model. Progress goes to
/// `job` under "encoding latents".
pub fn training_latents(
    model: &ModelDir,
    data: &Dataset,
    device: &Device,
    job: &JobContext,
) -> Result<Option<LatentDistributions>, LatentError> {
    if !model.info.is_latent() {
        return Ok(None);
    }
    let vae_dir = model.root.join(VAE_DIR);
    model.check_data(data)?;
    let data_hash = data.content_hash();
    let vae_hash = vae_sha256(&vae_dir)?;
    let shape = model.info.architecture.shape();
    let dir = cache_dir(&data_hash, &vae_hash);
    crate::files::create_dir_all(&dir)?;
    let chunks = data.len().div_ceil(CHUNK);
    let mut space: Option<LatentSpace> = None;
    let mut out = LatentDistributions::empty(&vae_hash, shape);
    for k in 0..chunks {
        job.stop_if_cancelled()?;
        let first = k * CHUNK;
        let key = ChunkKey {
            data_hash: data_hash.clone(),
            vae_sha256: vae_hash.clone(),
            first,
            count: CHUNK.min(data.len() - first),
            shape,
        };
        let path = chunk_path(&dir, k);
        let stored = path
            .is_file()
            .then(|| crate::files::read(&path).map(|bytes| read_chunk(&bytes, &key)))
            .transpose()?;
        let chunk = match stored {
            Some(Ok(chunk)) => chunk,
            // Missing, or damaged (a foreign file, a torn disk block): encode it (again).
            _ => {
                if space.is_none() {
                    space = model.latent_space(device)?;
                }
                let space = space.as_ref().expect("opened above");
                let images: Vec<f32> = (first..first + key.count)
                    .flat_map(|i| crate::data::pixels::bytes_to_unit(data.image(i)))
                    .collect();
                let encoded = space.encode(&images, [data.channels, data.height, data.width], device)?;
                write_atomic(&path, &chunk_bytes(&key, &encoded))?;
                encoded
            }
        };
        out.extend(chunk);
        job.report("encoding latents", (first + key.count) as u64, data.len() as u64, "");
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ChunkKey {
        ChunkKey {
            data_hash: "d".repeat(64),
            vae_sha256: "v".repeat(64),
            first: 256,
            count: 2,
            shape: [1, 1, 2],
        }
    }

    #[test]
    fn chunks_round_trip_and_refuse_another_key() {
        let latents = LatentDistributions {
            vae_sha256: "v".repeat(64),
            shape: [1, 1, 2],
            mean: vec![0.5, -1.0, 2.0, 3.0],
            log_variance: vec![-2.0, -3.0, 0.0, 1.0],
        };
        let bytes = chunk_bytes(&key(), &latents);
        assert_eq!(read_chunk(&bytes, &key()).unwrap(), latents);
        let mut other = key();
        other.first = 0;
        assert!(read_chunk(&bytes, &other).unwrap_err().to_string().contains("first"));
        let mut other = key();
        other.vae_sha256 = "w".repeat(64);
        assert!(
            read_chunk(&bytes, &other)
                .unwrap_err()
                .to_string()
                .contains("vae_sha256")
        );
        let mut other = key();
        other.shape = [2, 1, 1];
        assert!(read_chunk(&bytes, &other).unwrap_err().to_string().contains("shape"));
        assert!(read_chunk(&bytes[..bytes.len() - 3], &key()).is_err());
    }

    #[test]
    fn non_finite_latents_are_refused() {
        let latents = LatentDistributions {
            vae_sha256: "v".repeat(64),
            shape: [1, 1, 2],
            mean: vec![0.5, f32::NAN, 2.0, 3.0],
            log_variance: vec![0.0; 4],
        };
        let err = read_chunk(&chunk_bytes(&key(), &latents), &key())
            .unwrap_err()
            .to_string();
        assert!(err.contains("non-finite"), "{err}");
    }
}
