//! The fused scoring kernels, written once in CubeCL (`#[cube]`) and compiled for whichever
//! runtime burn computes with: WGSL on wgpu, SPIR-V on Vulkan, CUDA C++ on CUDA.
//!
//! Both read index rows as the index stores them — f16 packed two per 32-bit word (the even
//! element in the low half) or f32 bit patterns — and decode them in the kernel, so no f32 copy
//! of the index is made anywhere. f16 is decoded with integer arithmetic rather than a native
//! f16 type, so the kernels need no `shader-f16` support from the device.
//!
//! - [`summary_dots`]: one compact-block row dotted with up to [`QUERY_GROUP`] query vectors.
//! - [`bucket_dots`]: every timestep bucket of one row dotted with the query's vector of the
//!   same bucket (TracIn's per-bucket products), or their cosines.
//!
//! One cube (workgroup) of [`THREADS`] units per row (or per (bucket, row)): the units stride
//! over the row's features, keep their partial sums in registers, and reduce them in shared
//! memory.

use cubecl::prelude::*;

/// Units per cube.
pub const THREADS: u32 = 128;
/// Query vectors one [`summary_dots`] launch scores.
pub const QUERY_GROUP: u32 = 16;
/// Cubes per dispatch dimension at most (WebGPU's guaranteed limit): rows past it continue
/// along the next dimension.
pub const MAX_GROUPS: u32 = 65_535;

/// The f32 value of the IEEE half-precision number in the low 16 bits of `h`.
#[cube]
fn half_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000) << 16;
    let exponent = (h >> 10) & 0x1f;
    let mantissa = h & 0x3ff;
    let normal = f32::reinterpret(sign | ((exponent + 112) << 23) | (mantissa << 13));
    let infinite_or_nan = f32::reinterpret(sign | 0x7f80_0000 | (mantissa << 13));
    // Zero and subnormals: mantissa × 2⁻²⁴, signed.
    let small = f32::cast_from(mantissa) * 5.960_464_5e-8;
    let small = select(sign != 0, -small, small);
    select(exponent == 0, small, select(exponent == 31, infinite_or_nan, normal))
}

/// Feature `index` of `rows`, stored as f16 pairs (`half`) or f32 bit patterns.
#[cube]
fn feature(rows: &[u32], index: u32, #[comptime] half: bool) -> f32 {
    if half {
        let word = rows[(index / 2) as usize];
        half_to_f32((word >> ((index & 1) * 16)) & 0xffff)
    } else {
        f32::reinterpret(rows[index as usize])
    }
}

/// Sums `values[k · THREADS + unit]` over the units of the cube for each of the `groups`
/// blocks of `values`, leaving block k's sum in `values[k · THREADS]`: a tree of log₂ THREADS
/// halvings, unrolled at compile time (the widths are constants).
#[cube]
fn reduce_blocks(values: &mut Shared<[f32]>, #[comptime] groups: u32) {
    sync_cube();
    #[unroll]
    for step in 1..THREADS.trailing_zeros() + 1 {
        let width = THREADS >> step;
        if UNIT_POS < width {
            #[unroll]
            for k in 0..groups {
                let at = k * THREADS + UNIT_POS;
                let other = values[(at + width) as usize];
                values[at as usize] += other;
            }
        }
        sync_cube();
    }
}

/// Adds `x` (feature `d` of a row) times each query's feature `d` to `sums`, for the `group`
/// query vectors starting at `first`.
#[cube]
fn accumulate(sums: &mut Array<f32>, queries: &[f32], x: f32, d: u32, dim: u32, first: u32, #[comptime] group: u32) {
    #[unroll]
    for k in 0..group {
        sums[k as usize] += x * queries[((first + k) * dim + d) as usize];
    }
}

/// `out[r · stride + first + k] = Σ_d rows[r, d] · queries[first + k, d]` for the `group` (at
/// most [`QUERY_GROUP`]) query vectors starting at `first`, for the `n` rows of `dim` features
/// in `rows`. Cube (x, y) scores row x + y · [`MAX_GROUPS`].
///
/// `group` is a compile-time constant, so one query is one register and one reduction, not
/// sixteen. With `paired` (f16 rows of an even width, so every row starts on a whole word), a
/// unit reads whole 32-bit words: two features per load.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn summary_dots(
    rows: &[u32],
    queries: &[f32],
    out: &mut [f32],
    n: u32,
    dim: u32,
    first: u32,
    stride: u32,
    #[comptime] half: bool,
    #[comptime] paired: bool,
    #[comptime] group: u32,
) {
    let row = CUBE_POS_X + CUBE_POS_Y * MAX_GROUPS;
    let mut sums = Array::<f32>::new(group as usize);
    #[unroll]
    for k in 0..group {
        sums[k as usize] = 0.0;
    }
    if row < n {
        if paired {
            let base = row * dim / 2;
            for w in range_stepped(UNIT_POS, dim / 2, THREADS) {
                let word = rows[(base + w) as usize];
                accumulate(&mut sums, queries, half_to_f32(word & 0xffff), 2 * w, dim, first, group);
                accumulate(
                    &mut sums,
                    queries,
                    half_to_f32(word >> 16),
                    2 * w + 1,
                    dim,
                    first,
                    group,
                );
            }
        } else {
            let base = row * dim;
            for d in range_stepped(UNIT_POS, dim, THREADS) {
                accumulate(&mut sums, queries, feature(rows, base + d, half), d, dim, first, group);
            }
        }
    }
    let mut partial = Shared::<[f32]>::new_slice((group * THREADS) as usize);
    #[unroll]
    for k in 0..group {
        partial[(k * THREADS + UNIT_POS) as usize] = sums[k as usize];
    }
    reduce_blocks(&mut partial, group);
    if row < n && UNIT_POS < group {
        out[(row * stride + first + UNIT_POS) as usize] = partial[(UNIT_POS * THREADS) as usize];
    }
}

/// `out[r · buckets + b] = Σ_d rows[r, b, d] · query[b, d]` for the `n` rows of `buckets` ×
/// `dim` features in `rows`; with `normalise`, divided by the row's bucket norm (its cosine
/// with a unit query; 0 for a zero row). Cube (x, y, z) scores bucket x of row y + z ·
/// [`MAX_GROUPS`].
#[cube(launch)]
pub fn bucket_dots(
    rows: &[u32],
    query: &[f32],
    out: &mut [f32],
    n: u32,
    buckets: u32,
    dim: u32,
    #[comptime] half: bool,
    #[comptime] normalise: bool,
) {
    let bucket = CUBE_POS_X;
    let row = CUBE_POS_Y + CUBE_POS_Z * MAX_GROUPS;
    let mut dot = 0.0f32;
    let mut square = 0.0f32;
    if row < n {
        let base = (row * buckets + bucket) * dim;
        for d in range_stepped(UNIT_POS, dim, THREADS) {
            let x = feature(rows, base + d, half);
            dot += x * query[(bucket * dim + d) as usize];
            square += x * x;
        }
    }
    // Block 0: the dot products; block 1: the squared norms.
    let mut partial = Shared::<[f32]>::new_slice((2 * THREADS) as usize);
    partial[UNIT_POS as usize] = dot;
    partial[(THREADS + UNIT_POS) as usize] = square;
    reduce_blocks(&mut partial, 2u32);
    if row < n && UNIT_POS == 0 {
        let mut value = partial[0];
        if normalise {
            let norm_squared = partial[THREADS as usize];
            value = select(norm_squared > 0.0, value / f32::sqrt(norm_squared), 0.0);
        }
        out[(row * buckets + bucket) as usize] = value;
    }
}
