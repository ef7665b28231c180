//! The fused scoring passes on a GPU: the CubeCL kernels of [`super::kernels`] (`summary_dots`
//! over the compact block, `bucket_dots` over every bucket), launched on the very device burn
//! computes with, whichever CubeCL runtime that is (wgpu, Vulkan, CUDA). The index's f16 (or
//! f32) bytes are uploaded as they are stored and decoded inside the kernel, so no f32 copy of
//! the index is made anywhere; the uploaded blocks stay on the device (up to a budget,
//! [`GPU_CACHE_ENV`]), so a second query reads the index from device memory only.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::tensor::Device;
use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernels::{self, MAX_GROUPS, QUERY_GROUP, THREADS};
use super::summary::SummaryPart;
use super::{Index, IndexError, chunk_path, map_file};

/// Environment variable: megabytes of index blocks kept on the GPU between queries (default
/// 4096). Blocks past the budget are uploaded for each query and dropped.
pub const GPU_CACHE_ENV: &str = "RETRACE_GPU_CACHE_MB";

/// Bytes of rows uploaded and scored per launch at most: a gibibyte, or less where the device
/// binds no buffer that large. Fewer, larger launches matter: on wgpu a launch costs a fixed
/// fraction of a millisecond (480 launches of 64 MiB took 124 ms for a million images on an
/// H200, at 259 GB/s).
pub fn launch_bytes(client: &Client) -> usize {
    usize::try_from(client.properties().memory.max_page_size)
        .unwrap_or(usize::MAX)
        .min(1 << 30)
}

/// The CubeCL client of `device` when burn computes there through a CubeCL runtime (wgpu,
/// Vulkan or CUDA), where the scoring kernels run; `None` on the CPU (flex).
pub fn gpu_client(device: &Device) -> Option<Client> {
    match device.clone().without_autodiff().as_dispatch() {
        burn_dispatch::DispatchDevice::Cube(cube) => Some(cube.client()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// 32-bit words holding `features` stored values: two f16 per word, or one f32.
fn stored_words(features: usize, half: bool) -> usize {
    if half { features.div_ceil(2) } else { features }
}

/// Scores `n` rows of `dim` features (f16 pairs when `half`, else f32) in `block` against
/// `count` query vectors (`queries`, f32, uploaded): `[n, count]` f32 scores on the device.
/// What [`Index::summary_dots_gpu`] launches per block, and what `retrace bench` times on a
/// device-resident compact block.
pub fn launch_summary_dots(
    client: &Client,
    block: &Handle,
    n: usize,
    dim: usize,
    queries: &Handle,
    count: usize,
    half: bool,
) -> Handle {
    let out = client.empty(n * count * 4);
    let words = stored_words(n * dim, half);
    let paired = half && dim.is_multiple_of(2);
    let groups = MAX_GROUPS as usize;
    for first in (0..count).step_by(QUERY_GROUP as usize) {
        let group = (count - first).min(QUERY_GROUP as usize) as u32;
        // SAFETY: the buffers hold the lengths given: `block` n × dim features in `words`
        // words, `queries` count × dim f32, `out` n × count f32.
        unsafe {
            kernels::summary_dots::launch(
                client,
                CubeCount::Static(n.min(groups) as u32, n.div_ceil(groups) as u32, 1),
                CubeDim::new_1d(THREADS),
                BufferArg::from_raw_parts(block.clone(), words),
                BufferArg::from_raw_parts(queries.clone(), count * dim),
                BufferArg::from_raw_parts(out.clone(), n * count),
                n as u32,
                dim as u32,
                first as u32,
                count as u32,
                half,
                paired,
                group,
            );
        }
    }
    out
}

/// Scores every bucket of `n` rows of `buckets` × `dim` features in `block` against the
/// matching bucket of `query` (uploaded, `[buckets, dim]` f32): `[n, buckets]` dot products,
/// or cosines with `normalise`.
fn launch_bucket_dots(
    client: &Client,
    block: &Handle,
    (n, buckets, dim): (usize, usize, usize),
    query: &Handle,
    half: bool,
    normalise: bool,
) -> Handle {
    let out = client.empty(n * buckets * 4);
    let words = stored_words(n * buckets * dim, half);
    let groups = MAX_GROUPS as usize;
    // SAFETY: the buffers hold the lengths given, as in `launch_summary_dots`.
    unsafe {
        kernels::bucket_dots::launch(
            client,
            CubeCount::Static(buckets as u32, n.min(groups) as u32, n.div_ceil(groups) as u32),
            CubeDim::new_1d(THREADS),
            BufferArg::from_raw_parts(block.clone(), words),
            BufferArg::from_raw_parts(query.clone(), buckets * dim),
            BufferArg::from_raw_parts(out.clone(), n * buckets),
            n as u32,
            buckets as u32,
            dim as u32,
            half,
            normalise,
        );
    }
    out
}

/// Which rows of an index an uploaded block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Block {
    /// A part of a chunk's compact block.
    Summary(SummaryPart),
    /// A chunk's every bucket.
    Buckets,
}

/// (checkpoint, block, chunk, piece of the chunk).
type BlockKey = (usize, Block, usize, usize);

/// Index blocks kept on a GPU between queries.
#[derive(Default)]
pub(super) struct DeviceCache {
    entries: Mutex<(HashMap<BlockKey, Handle>, usize)>,
}

impl std::fmt::Debug for DeviceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.entries.lock().map_or(0, |e| e.1);
        write!(f, "DeviceCache({bytes} bytes)")
    }
}

fn budget() -> usize {
    std::env::var(GPU_CACHE_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4096)
        << 20
}

/// Uploads `bytes` (padded to whole 32-bit words).
pub fn upload(client: &Client, bytes: &[u8]) -> Handle {
    if bytes.len().is_multiple_of(4) {
        client.create_from_slice(bytes)
    } else {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4), 0);
        client.create_from_slice(&padded)
    }
}

/// The little-endian bytes of `values`, as the kernels read them.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Reads f32 buffers back from the device, one vector per handle.
pub fn read_f32(client: &Client, handles: Vec<Handle>) -> Result<Vec<Vec<f32>>, IndexError> {
    let bytes = client
        .read(handles)
        .map_err(|e| IndexError::Invalid(format!("the GPU scoring pass failed: {e:?}")))?;
    Ok(bytes
        .iter()
        .map(|b| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .collect())
}

impl Index {
    /// The device handle of `key`'s rows (`bytes`, read on a miss), cached within the budget.
    fn device_block(
        &self,
        client: &Client,
        key: BlockKey,
        bytes: impl FnOnce() -> Result<Vec<u8>, IndexError>,
    ) -> Result<Handle, IndexError> {
        let mut entries = self
            .device_cache
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(handle) = entries.0.get(&key) {
            return Ok(handle.clone());
        }
        let bytes = bytes()?;
        let handle = upload(client, &bytes);
        if entries.1 + bytes.len() <= budget() {
            entries.1 += bytes.len();
            entries.0.insert(key, handle.clone());
        }
        Ok(handle)
    }

    /// What every launch over rows of `row_bytes` shares: rows per launch, the uploaded query
    /// vectors, and whether the rows are f16.
    fn launch_setting(&self, client: &Client, row_bytes: usize, queries: &[f32]) -> (usize, Handle, bool) {
        let m = &self.manifest;
        (
            (launch_bytes(client) / row_bytes.max(1)).clamp(1, m.chunk_size),
            client.create_from_slice(&f32_bytes(queries)),
            m.key.storage == super::Storage::F16,
        )
    }

    /// [`Index::summary_dots`] on a GPU: the `summary_dots` kernel over each chunk's
    /// `part`, uploaded once and kept on the device.
    pub fn summary_dots_gpu(
        &self,
        client: &Client,
        i: usize,
        part: SummaryPart,
        queries: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, IndexError> {
        let m = &self.manifest;
        let d = m.dim;
        self.check_queries(queries, count)?;
        let row_bytes = d * m.key.storage.bytes();
        let (piece_rows, query_handle, half) = self.launch_setting(client, row_bytes, queries);
        let mut outputs = Vec::new();
        for k in 0..m.chunks_per_checkpoint() {
            let rows = self.chunk_rows(k);
            for (p, first_row) in (0..rows).step_by(piece_rows).enumerate() {
                let n = piece_rows.min(rows - first_row);
                let block = self.device_block(client, (i, Block::Summary(part), k, p), || {
                    let (map, layout) = self.summary_file(i, k)?;
                    let section = &map[layout.section(part)];
                    Ok(section[first_row * row_bytes..(first_row + n) * row_bytes].to_vec())
                })?;
                let out = launch_summary_dots(client, &block, n, d, &query_handle, count, half);
                outputs.push(out);
            }
        }
        Ok(read_f32(client, outputs)?.concat())
    }

    /// [`Index::bucket_dots`] on a GPU: the `bucket_dots` kernel over every bucket of
    /// every chunk, uploaded once and kept on the device within the budget.
    pub fn bucket_dots_gpu(
        &self,
        client: &Client,
        i: usize,
        query: &[f32],
        normalise: bool,
    ) -> Result<Vec<f32>, IndexError> {
        let m = &self.manifest;
        let c = self.checkpoint(i)?;
        let (b, d) = (m.key.plan.buckets, m.dim);
        let query = self.bucket_query(query, normalise)?;
        let row_bytes = b * d * m.key.storage.bytes();
        let (piece_rows, query_handle, half) = self.launch_setting(client, row_bytes, &query);
        let mut outputs = Vec::new();
        for k in 0..m.chunks_per_checkpoint() {
            let rows = self.chunk_rows(k);
            for (p, first_row) in (0..rows).step_by(piece_rows).enumerate() {
                let n = piece_rows.min(rows - first_row);
                let block = self.device_block(client, (i, Block::Buckets, k, p), || {
                    let path = chunk_path(&self.dir, c.step, k);
                    let map = map_file(&path)?;
                    if map.len() != rows * row_bytes {
                        return Err(IndexError::Invalid(format!(
                            "{}: {} bytes, not {rows} rows of {row_bytes}",
                            path.display(),
                            map.len()
                        )));
                    }
                    Ok(map[first_row * row_bytes..(first_row + n) * row_bytes].to_vec())
                })?;
                let out = launch_bucket_dots(client, &block, (n, b, d), &query_handle, half, normalise);
                outputs.push(out);
            }
        }
        Ok(read_f32(client, outputs)?.concat())
    }
}
