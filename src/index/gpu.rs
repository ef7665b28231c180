//! The fused scoring passes on a wgpu device: the WGSL kernels of `shaders/` (`summary_dots`
//! over the compact block, `bucket_dots` over every bucket), launched through CubeCL's runtime
//! on the very device burn computes with. The index's f16 (or f32) bytes are uploaded as they
//! are stored and decoded inside the kernel, so no f32 copy of the index is made anywhere; the
//! uploaded blocks stay on the device (up to a budget, [`GPU_CACHE_ENV`]), so a second query
//! reads the index from device memory only.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::tensor::Device;
use cubecl::CubeCount;
use cubecl::ir::UIntKind;
use cubecl::ir::metadata::Info;
use cubecl::ir::settings::Dim3;
use cubecl::prelude::*;
use cubecl::server::{Handle, KernelArguments, MetadataBindingInfo};

use super::summary::SummaryPart;
use super::{Index, IndexError, chunk_path, map_file};

/// Environment variable: megabytes of index blocks kept on the GPU between queries (default
/// 4096). Blocks past the budget are uploaded for each query and dropped.
pub const GPU_CACHE_ENV: &str = "RETRACE_GPU_CACHE_MB";

/// Bytes of index rows uploaded and scored per launch at most.
const LAUNCH_BYTES: usize = 64 << 20;
/// Threads per workgroup, as the shaders declare.
const THREADS: u32 = 128;
/// Query vectors one `summary_dots` launch scores, as the shader declares.
const QUERY_GROUP: usize = 16;
/// Workgroups per dispatch dimension at most (WebGPU's guaranteed limit).
const MAX_GROUPS: usize = 65_535;

/// A WGSL kernel of `shaders/`.
#[derive(Clone, Copy)]
struct Wgsl {
    name: &'static str,
    source: &'static str,
}

const SUMMARY_DOTS: Wgsl = Wgsl {
    name: "summary_dots",
    source: include_str!("../../shaders/summary_dots.wgsl"),
};

const BUCKET_DOTS: Wgsl = Wgsl {
    name: "bucket_dots",
    source: include_str!("../../shaders/bucket_dots.wgsl"),
};

impl KernelMetadata for Wgsl {
    fn id(&self) -> KernelId {
        KernelId::new::<Self>()
            .info(self.name)
            .cube_dim(Dim3::from((THREADS, 1, 1)))
    }

    fn address_type(&self) -> ElemType {
        ElemType::UInt(UIntKind::U32)
    }
}

impl CubeKernel for Wgsl {
    fn define(&self) -> KernelDefinition {
        // Never compiled: the source is the kernel; the definition only keys the cache.
        let settings = KernelSettings::new(Dim3::from((THREADS, 1, 1)), ExecutionMode::Checked, AddressType::U32);
        KernelDefinition {
            body: Scope::root(settings.clone()),
            settings,
            info: Info::default(),
        }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource {
            source: self.source.to_owned(),
            entrypoint_name: "main".into(),
            lang: "wgsl",
        })
    }
}

/// The CubeCL client of `device` when it is a wgpu device (the kernels are WGSL).
pub fn wgpu_client(device: &Device) -> Option<Client> {
    match device.clone().without_autodiff().as_dispatch() {
        burn_dispatch::DispatchDevice::Cube(cube @ cubecl::Device::Wgpu(_)) => Some(cube.client()),
        _ => None,
    }
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
fn upload(client: &Client, bytes: &[u8]) -> Handle {
    if bytes.len().is_multiple_of(4) {
        client.create_from_slice(bytes)
    } else {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4), 0);
        client.create_from_slice(&padded)
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn read_f32(client: &Client, handles: Vec<Handle>) -> Result<Vec<Vec<f32>>, IndexError> {
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
    /// vectors, and the storage flag the shaders read (1 for f16).
    fn launch_setting(&self, client: &Client, row_bytes: usize, queries: &[f32]) -> (usize, Handle, u64) {
        let m = &self.manifest;
        (
            (LAUNCH_BYTES / row_bytes.max(1)).clamp(1, m.chunk_size),
            client.create_from_slice(&f32_bytes(queries)),
            u64::from(m.key.storage == super::Storage::F16),
        )
    }

    /// [`Index::summary_dots`] on a wgpu device: the `summary_dots` kernel over each chunk's
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
                let out = client.empty(n * count * 4);
                for first in (0..count).step_by(QUERY_GROUP) {
                    let info = vec![n as u64, d as u64, count as u64, first as u64, half, count as u64];
                    client.launch(
                        Box::new(SUMMARY_DOTS),
                        CubeCount::Static(n.min(MAX_GROUPS) as u32, n.div_ceil(MAX_GROUPS) as u32, 1),
                        KernelArguments::new()
                            .with_buffer(block.clone().binding())
                            .with_buffer(query_handle.clone().binding())
                            .with_buffer(out.clone().binding())
                            .with_info(MetadataBindingInfo::custom(info)),
                    );
                }
                outputs.push(out);
            }
        }
        Ok(read_f32(client, outputs)?.concat())
    }

    /// [`Index::bucket_dots`] on a wgpu device: the `bucket_dots` kernel over every bucket of
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
                let out = client.empty(n * b * 4);
                let info = vec![n as u64, b as u64, d as u64, half, u64::from(normalise)];
                client.launch(
                    Box::new(BUCKET_DOTS),
                    CubeCount::Static(b as u32, n.min(MAX_GROUPS) as u32, n.div_ceil(MAX_GROUPS) as u32),
                    KernelArguments::new()
                        .with_buffer(block.binding())
                        .with_buffer(query_handle.clone().binding())
                        .with_buffer(out.clone().binding())
                        .with_info(MetadataBindingInfo::custom(info)),
                );
                outputs.push(out);
            }
        }
        Ok(read_f32(client, outputs)?.concat())
    }
}
