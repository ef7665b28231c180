// retrace: one training image's compact-block vector dotted with up to 16 query vectors.
//
// rows    [n, dim] feature values, f16 packed two per u32 (little-endian: the even element in
//         the low half) or f32 bit patterns, as the index stores them; read in place, never
//         widened to an f32 copy.
// queries [count, dim] f32.
// out     [n, count] f32: out[r * count + k] = Σ_d rows[r, d] · queries[first + k, d], for the
//         group of up to 16 queries starting at `first`.
//
// One workgroup per row (rows past 65,535 continue along y): its threads stride over the row's
// features, each keeping one partial sum per query, then reduce them in workgroup memory.
// Every storage buffer is declared read_write: CubeCL may place several in one wgpu buffer.

@group(0) @binding(0) var<storage, read_write> rows: array<u32>;
@group(0) @binding(1) var<storage, read_write> queries: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// Each u64 word of the launch's info is two u32s: n, dim, count, first, f16 (1) or f32 (0),
// the output's row stride.
@group(0) @binding(3) var<storage, read> info: array<u32>;

const THREADS: u32 = 128u;
const GROUP: u32 = 16u;

var<workgroup> partial: array<f32, 2048>; // GROUP × THREADS

fn feature(index: u32, half_precision: bool) -> f32 {
    if (half_precision) {
        let pair = unpack2x16float(rows[index / 2u]);
        return select(pair.x, pair.y, (index & 1u) == 1u);
    }
    return bitcast<f32>(rows[index]);
}

@compute @workgroup_size(128, 1, 1)
fn main(
    @builtin(workgroup_id) group_id: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let n = info[0];
    let dim = info[2];
    let count = info[4];
    let first = info[6];
    let half_precision = info[8] == 1u;
    let stride = info[10];
    let row = group_id.x + group_id.y * 65535u;
    let lane = local.x;
    let width = min(count - first, GROUP);

    var acc: array<f32, 16>;
    for (var k = 0u; k < GROUP; k++) {
        acc[k] = 0.0;
    }
    if (row < n) {
        let base = row * dim;
        for (var d = lane; d < dim; d += THREADS) {
            let x = feature(base + d, half_precision);
            for (var k = 0u; k < width; k++) {
                acc[k] += x * queries[(first + k) * dim + d];
            }
        }
    }
    for (var k = 0u; k < GROUP; k++) {
        partial[k * THREADS + lane] = acc[k];
    }
    workgroupBarrier();
    for (var half_width = THREADS / 2u; half_width > 0u; half_width /= 2u) {
        if (lane < half_width) {
            for (var k = 0u; k < GROUP; k++) {
                partial[k * THREADS + lane] += partial[k * THREADS + lane + half_width];
            }
        }
        workgroupBarrier();
    }
    if (row < n && lane < width) {
        out[row * stride + first + lane] = partial[lane * THREADS];
    }
}
