//! Fused CPU passes over an index's mapped files: every training image's scores against a
//! query are computed in one parallel pass that decodes a block of rows at a time into a small
//! scratch buffer and multiplies it at once, so the index is never copied into f32 as a whole
//! and no tensor is uploaded. The per-bucket methods (TracIn, `retrac-bucket`) read every
//! bucket of every row ([`Index::bucket_dots`]); the ranking methods read one section of the
//! compact block ([`Index::summary_dots`], [`super::summary`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;
use rayon::prelude::*;

use super::summary::{SummaryLayout, SummaryPart, summary_path};
use super::{Index, IndexError, IndexedCheckpoint, Storage, chunk_path, decode, map_file};

/// Compact-block rows decoded and multiplied at once by one thread (a few hundred KB of f32).
const ROWS_PER_BLOCK: usize = 16;

/// Files of an index kept mapped between queries.
#[derive(Default)]
pub(super) struct Mappings(Mutex<HashMap<PathBuf, Arc<Mmap>>>);

impl std::fmt::Debug for Mappings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.lock().map_or(0, |m| m.len());
        write!(f, "Mappings({count} files)")
    }
}

impl Index {
    /// The mapping of `path`, made on first use and kept.
    pub(super) fn mapped(&self, path: &Path) -> Result<Arc<Mmap>, IndexError> {
        let mut maps = self.maps.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(map) = maps.get(path) {
            return Ok(map.clone());
        }
        let map = Arc::new(map_file(path)?);
        maps.insert(path.to_owned(), map.clone());
        Ok(map)
    }

    /// Checkpoint `i` (manifest order).
    pub(super) fn checkpoint(&self, i: usize) -> Result<&IndexedCheckpoint, IndexError> {
        self.manifest
            .checkpoints
            .get(i)
            .ok_or_else(|| IndexError::Invalid(format!("the index has no checkpoint #{i}")))
    }

    /// Training images in chunk `k`.
    pub(super) fn chunk_rows(&self, k: usize) -> usize {
        self.manifest.chunk_rows(k)
    }

    /// (chunk, first row, end row) within every chunk that holds images `start..end` (clamped
    /// to the index), in order.
    pub(super) fn chunk_spans(&self, start: usize, end: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let size = self.manifest.chunk_size;
        let end = end.min(self.manifest.examples);
        (start / size..end.div_ceil(size)).filter_map(move |k| {
            let first = k * size;
            let (from, to) = (start.max(first) - first, (end - first).min(self.chunk_rows(k)));
            (from < to).then_some((k, from, to))
        })
    }

    /// The mapped summary file of chunk `k` of checkpoint `i`, checked against its layout.
    pub(super) fn summary_file(&self, i: usize, k: usize) -> Result<(Arc<Mmap>, SummaryLayout), IndexError> {
        let m = &self.manifest;
        let c = self.checkpoint(i)?;
        let layout = super::summary_layout(m, k);
        let path = summary_path(&self.dir, c.step, k);
        let map = self.mapped(&path)?;
        if map.len() != layout.len() {
            return Err(IndexError::Invalid(format!(
                "{}: {} bytes, not the {} of {} images' summaries: the index is damaged; rebuild it",
                path.display(),
                map.len(),
                layout.len(),
                layout.rows
            )));
        }
        Ok((map, layout))
    }

    /// `query` ([B × D]) checked against the index's shape, each bucket's row unit-normalised
    /// when `normalise`.
    pub(super) fn bucket_query(&self, query: &[f32], normalise: bool) -> Result<Vec<f32>, IndexError> {
        let (b, d) = (self.manifest.key.plan.buckets, self.manifest.dim);
        if query.len() != b * d {
            return Err(IndexError::Invalid(format!(
                "a query of {} values for an index of {b} buckets × {d} features",
                query.len()
            )));
        }
        let mut query = query.to_vec();
        if normalise {
            for q in query.chunks_mut(d) {
                let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 0.0 {
                    q.iter_mut().for_each(|v| *v /= norm);
                }
            }
        }
        Ok(query)
    }

    /// `queries` ([count × D]) checked against the index's feature width.
    pub(super) fn check_queries(&self, queries: &[f32], count: usize) -> Result<(), IndexError> {
        let d = self.manifest.dim;
        if queries.len() != count * d || count == 0 {
            return Err(IndexError::Invalid(format!(
                "{} query values for {count} vectors of an index of {d} features",
                queries.len()
            )));
        }
        Ok(())
    }

    /// Per-bucket dot products of every training image's features at checkpoint `i` with
    /// `query` ([B × D]), or cosines when `normalise` ([N × B]): one pass over the mapped files,
    /// in parallel over images, decoding a bucket at a time — the index is never copied into
    /// f32. What TracIn and the ReTrac bucket variant score with on the CPU.
    pub fn bucket_dots(&self, i: usize, query: &[f32], normalise: bool) -> Result<Vec<f32>, IndexError> {
        let m = &self.manifest;
        let c = self.checkpoint(i)?;
        let (b, d) = (m.key.plan.buckets, m.dim);
        let query = self.bucket_query(query, normalise)?;
        let row_bytes = b * d * m.key.storage.bytes();
        let mut out = vec![0f32; m.examples * b];
        for (k, scores) in out.chunks_mut(m.chunk_size * b).enumerate() {
            let path = chunk_path(&self.dir, c.step, k);
            let map = self.mapped(&path)?;
            if map.len() != scores.len() / b * row_bytes {
                return Err(IndexError::Invalid(format!(
                    "{}: {} bytes, not {} rows of {row_bytes}",
                    path.display(),
                    map.len(),
                    scores.len() / b
                )));
            }
            scores
                .par_chunks_mut(b)
                .zip(map.par_chunks(row_bytes))
                .for_each_init(Vec::new, |scratch, (slot, row)| {
                    row_bucket_dots(row, m.key.storage, &query, d, normalise, scratch, slot)
                });
        }
        Ok(out)
    }

    /// Every training image's `part` vector at checkpoint `i` dotted with each of `count`
    /// query vectors (`queries`, [count × D] row-major): the flat [N × count] products, in one
    /// parallel pass over the compact block (1/B of the index's bytes).
    pub fn summary_dots(
        &self,
        i: usize,
        part: SummaryPart,
        queries: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, IndexError> {
        let m = &self.manifest;
        let d = m.dim;
        self.check_queries(queries, count)?;
        let packed = PackedQueries::new(queries, count, d);
        let mut out = vec![0f32; m.examples * count];
        for (k, scores) in out.chunks_mut(m.chunk_size * count).enumerate() {
            let (map, layout) = self.summary_file(i, k)?;
            let section = &map[layout.section(part)];
            let row_bytes = layout.row_bytes();
            scores
                .par_chunks_mut(ROWS_PER_BLOCK * count)
                .zip(section.par_chunks(ROWS_PER_BLOCK * row_bytes))
                .for_each_init(Vec::new, |scratch, (slot, rows)| {
                    scratch.clear();
                    decode(rows, m.key.storage, scratch);
                    packed.products(scratch, slot);
                });
        }
        Ok(out)
    }

    /// The `part` vectors of training images `start..end` at checkpoint `i`, decoded:
    /// [(end − start) × D] row-major.
    pub fn summary_rows(&self, i: usize, part: SummaryPart, start: usize, end: usize) -> Result<Vec<f32>, IndexError> {
        let m = &self.manifest;
        let mut values = Vec::with_capacity(end.min(m.examples).saturating_sub(start) * m.dim);
        for (k, from, to) in self.chunk_spans(start, end) {
            let (map, layout) = self.summary_file(i, k)?;
            let section = &map[layout.section(part)];
            decode(
                &section[from * layout.row_bytes()..to * layout.row_bytes()],
                m.key.storage,
                &mut values,
            );
        }
        Ok(values)
    }

    /// The norm of every training image's bucket features at checkpoint `i`: [N × B].
    pub fn bucket_norms(&self, i: usize) -> Result<Vec<f32>, IndexError> {
        let m = &self.manifest;
        let mut out = Vec::with_capacity(m.examples * m.key.plan.buckets);
        for k in 0..m.chunks_per_checkpoint() {
            let (map, layout) = self.summary_file(i, k)?;
            decode(&map[layout.norms()], Storage::F32, &mut out);
        }
        Ok(out)
    }
}

/// `rows` [N × D] (f32, row-major) · `queries`ᵀ ([count × D]): the flat [N × count] products,
/// in parallel over blocks of rows — the CPU scoring of features already in memory (TRAK's
/// weighted features).
pub fn row_products(rows: &[f32], dim: usize, queries: &[f32], count: usize) -> Vec<f32> {
    let packed = PackedQueries::new(queries, count, dim);
    let mut out = vec![0f32; rows.len() / dim.max(1) * count];
    out.par_chunks_mut(ROWS_PER_BLOCK * count)
        .zip(rows.par_chunks(ROWS_PER_BLOCK * dim))
        .for_each(|(slot, block)| packed.products(block, slot));
    out
}

/// Query vectors laid out for [`PackedQueries::products`]: in groups of [`LANES`] vectors, each
/// group stored feature-major ([D][LANES], zero-padded), so that one feature of a training row
/// multiplies a whole group's lanes at once.
pub(super) struct PackedQueries {
    lanes: Vec<f32>,
    count: usize,
    dim: usize,
}

/// Query vectors multiplied at once: two 8-wide registers.
const LANES: usize = 16;
/// Training rows multiplied at once: 4 × 16 accumulators fit in the registers.
const TILE_ROWS: usize = 4;

impl PackedQueries {
    /// Packs `count` query vectors of width `dim` (`queries`, row-major).
    pub(super) fn new(queries: &[f32], count: usize, dim: usize) -> Self {
        assert_eq!(queries.len(), count * dim, "query vectors of the rows' width");
        let groups = count.div_ceil(LANES);
        let mut lanes = vec![0f32; groups * dim * LANES];
        for (k, q) in queries.chunks_exact(dim.max(1)).enumerate() {
            let (g, l) = (k / LANES, k % LANES);
            for (d, &v) in q.iter().enumerate() {
                lanes[(g * dim + d) * LANES + l] = v;
            }
        }
        Self { lanes, count, dim }
    }

    /// `out` [rows × count] = `block` [rows × D] · the queries, for a block of whole rows.
    pub(super) fn products(&self, block: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { self.products_avx2(block, out) };
        }
        self.products_with::<false>(block, out)
    }

    /// [`Self::products`] compiled for AVX2 with fused multiply-adds.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn products_avx2(&self, block: &[f32], out: &mut [f32]) {
        self.products_with::<true>(block, out)
    }

    #[inline(always)]
    fn products_with<const FMA: bool>(&self, block: &[f32], out: &mut [f32]) {
        let (dim, count) = (self.dim, self.count);
        let rows = block.len() / dim.max(1);
        assert_eq!(out.len(), rows * count, "an output slot per row and query");
        for (g, group) in self.lanes.chunks_exact(dim * LANES).enumerate() {
            let width = (count - g * LANES).min(LANES);
            let mut r = 0;
            while r < rows {
                let tile = (rows - r).min(TILE_ROWS);
                let acc = if tile == TILE_ROWS {
                    tile_products::<TILE_ROWS, FMA>(&block[r * dim..(r + TILE_ROWS) * dim], group, dim)
                } else {
                    let mut acc = [[0f32; LANES]; TILE_ROWS];
                    for t in 0..tile {
                        acc[t] = tile_products::<1, FMA>(&block[(r + t) * dim..(r + t + 1) * dim], group, dim)[0];
                    }
                    acc
                };
                for (t, lanes) in acc.iter().enumerate().take(tile) {
                    let at = (r + t) * count + g * LANES;
                    out[at..at + width].copy_from_slice(&lanes[..width]);
                }
                r += tile;
            }
        }
    }
}

/// The products of `R` consecutive rows of `rows` ([R × D]) with one packed group of queries
/// ([D][LANES]): R × LANES accumulators, one pass over D.
#[inline(always)]
fn tile_products<const R: usize, const FMA: bool>(rows: &[f32], group: &[f32], dim: usize) -> [[f32; LANES]; R] {
    assert!(rows.len() == R * dim && group.len() == dim * LANES);
    let xs: [&[f32]; R] = std::array::from_fn(|r| &rows[r * dim..(r + 1) * dim]);
    let mut acc = [[0f32; LANES]; R];
    for (d, q) in group.chunks_exact(LANES).enumerate() {
        for r in 0..R {
            let x = xs[r][d];
            for l in 0..LANES {
                acc[r][l] = if FMA {
                    x.mul_add(q[l], acc[r][l])
                } else {
                    acc[r][l] + x * q[l]
                };
            }
        }
    }
    acc
}

/// ⟨q_b, x_b⟩ for every bucket of one stored row, or the cosine when `normalise` (the query
/// rows are unit already): `row` holds B × D values encoded as `storage`, decoded a bucket at a
/// time into `scratch` and dotted at once, so nothing of the index is copied beyond one bucket.
fn row_bucket_dots(
    row: &[u8],
    storage: Storage,
    query: &[f32],
    dim: usize,
    normalise: bool,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    let width = dim * storage.bytes();
    for (b, slot) in out.iter_mut().enumerate() {
        scratch.clear();
        decode(&row[b * width..(b + 1) * width], storage, scratch);
        let q = &query[b * dim..(b + 1) * dim];
        // Eight independent accumulators, so the loop vectorises.
        let (mut dot, mut sq) = ([0f32; 8], [0f32; 8]);
        let (xs, qs) = (scratch.chunks_exact(8), q.chunks_exact(8));
        let (x_rest, q_rest) = (xs.remainder(), qs.remainder());
        for (x, y) in xs.zip(qs) {
            for l in 0..8 {
                dot[l] += x[l] * y[l];
                sq[l] += x[l] * x[l];
            }
        }
        let mut d: f32 = dot.iter().sum();
        let mut n: f32 = sq.iter().sum();
        for (x, y) in x_rest.iter().zip(q_rest) {
            d += x * y;
            n += x * x;
        }
        *slot = if normalise {
            if n > 0.0 { d / n.sqrt() } else { 0.0 }
        } else {
            d
        };
    }
}
