//! A fitted curvature on disk: one safetensors file per (checkpoint, data, fit settings), named
//! after a hash of its key, written atomically, with the key and a SHA-256 of the tensor data
//! in its metadata. A file whose key differs or whose data is damaged is refused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::{CurvatureError, FitConfig, LayerEigen};
use crate::files::{sha256, write_atomic};

/// Version of the curvature file layout.
pub const CURVATURE_FORMAT_VERSION: u32 = 1;

/// What a fitted curvature depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvatureKey {
    /// [`CURVATURE_FORMAT_VERSION`].
    pub format_version: u32,
    /// SHA-256 of the checkpoint's weights.
    pub checkpoint_hash: String,
    /// Content hash of the training data.
    pub data_hash: String,
    /// GGN or empirical Fisher, expand or reduce, and the (t, ε) plan.
    pub fit: FitConfig,
    /// Number of training images the factors were fitted on (a seeded subset).
    pub fit_images: usize,
    /// (d_in, d_out) of every layer.
    pub layer_shapes: Vec<(usize, usize)>,
}

impl CurvatureKey {
    /// The file of this key inside `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        let json = serde_json::to_vec(self).unwrap_or_default();
        dir.join(format!("curvature-{}.safetensors", &sha256(&json)[..16]))
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The named tensors of `layers`, as (name, shape, little-endian bytes), sorted by name.
fn named_tensors(layers: &[LayerEigen]) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for (l, e) in layers.iter().enumerate() {
        out.insert(format!("{l:03}.q_a"), (vec![e.d_in, e.d_in], f32_bytes(&e.q_a)));
        out.insert(format!("{l:03}.lambda_a"), (vec![e.d_in], f32_bytes(&e.lambda_a)));
        out.insert(format!("{l:03}.q_s"), (vec![e.d_out, e.d_out], f32_bytes(&e.q_s)));
        out.insert(format!("{l:03}.lambda_s"), (vec![e.d_out], f32_bytes(&e.lambda_s)));
        if let Some(c) = &e.corrected {
            out.insert(format!("{l:03}.corrected"), (vec![e.d_out, e.d_in], f32_bytes(c)));
        }
    }
    out
}

fn payload_hash<'a>(parts: impl Iterator<Item = &'a [u8]>) -> String {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    sha256(&all)
}

/// Writes `layers` under `key` into `dir` (atomically); returns the file's path.
pub fn save_curvature(dir: &Path, key: &CurvatureKey, layers: &[LayerEigen]) -> Result<PathBuf, CurvatureError> {
    let tensors = named_tensors(layers);
    let mut metadata = HashMap::new();
    metadata.insert(
        "key".to_owned(),
        serde_json::to_string(key).expect("a curvature key serialises"),
    );
    metadata.insert(
        "payload_sha256".to_owned(),
        payload_hash(tensors.values().map(|(_, b)| b.as_slice())),
    );
    let views = tensors
        .iter()
        .map(|(name, (shape, bytes))| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|views| safetensors::serialize(views, Some(metadata)))
        .map_err(|e| CurvatureError::Invalid(format!("cannot serialise the curvature: {e}")))?;
    let bytes = crate::files::canonical_safetensors(views);
    let path = key.path(dir);
    crate::files::create_dir_all(dir)?;
    write_atomic(&path, &bytes)?;
    Ok(path)
}

/// `len` f32 values of the tensor `name` of the curvature file `path`.
fn read_f32(st: &SafeTensors, path: &Path, name: &str, len: usize) -> Result<Vec<f32>, CurvatureError> {
    let damaged = |reason: String| CurvatureError::Damaged {
        path: path.to_owned(),
        reason: format!("{name}: {reason}"),
    };
    let view = st.tensor(name).map_err(|e| damaged(e.to_string()))?;
    if view.dtype() != Dtype::F32 || view.data().len() != 4 * len {
        return Err(damaged(format!("expected {len} f32 values")));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Reads the curvature of `key` from `dir`: `Ok(None)` when there is no such file, an error
/// when the file is damaged or was written for another key.
pub fn load_curvature(dir: &Path, key: &CurvatureKey) -> Result<Option<Vec<LayerEigen>>, CurvatureError> {
    let path = key.path(dir);
    if !path.is_file() {
        return Ok(None);
    }
    let damaged = |reason: String| CurvatureError::Damaged {
        path: path.clone(),
        reason,
    };
    let bytes = crate::files::read(&path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| damaged(format!("not a readable safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| damaged(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let stored: CurvatureKey = meta
        .get("key")
        .and_then(|k| serde_json::from_str(k).ok())
        .ok_or_else(|| damaged("no readable key in its metadata".into()))?;
    if &stored != key {
        return Err(damaged("it was fitted for another model, data or setting".into()));
    }
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let mut parts = Vec::with_capacity(names.len());
    for n in &names {
        parts.push(st.tensor(n).map_err(|e| damaged(e.to_string()))?.data());
    }
    if meta.get("payload_sha256") != Some(&payload_hash(parts.into_iter())) {
        return Err(damaged("checksum mismatch".into()));
    }
    let mut layers = Vec::with_capacity(key.layer_shapes.len());
    for (l, &(d_in, d_out)) in key.layer_shapes.iter().enumerate() {
        let corrected_name = format!("{l:03}.corrected");
        layers.push(LayerEigen {
            d_in,
            d_out,
            q_a: read_f32(&st, &path, &format!("{l:03}.q_a"), d_in * d_in)?,
            lambda_a: read_f32(&st, &path, &format!("{l:03}.lambda_a"), d_in)?,
            q_s: read_f32(&st, &path, &format!("{l:03}.q_s"), d_out * d_out)?,
            lambda_s: read_f32(&st, &path, &format!("{l:03}.lambda_s"), d_out)?,
            corrected: if names.contains(&corrected_name) {
                Some(read_f32(&st, &path, &corrected_name, d_out * d_in)?)
            } else {
                None
            },
        });
    }
    Ok(Some(layers))
}
