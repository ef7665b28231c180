// retrace: every timestep bucket of one training image's features dotted with the query's
// feature of the same bucket — TracIn's per-bucket products, or with `normalise` the cosines
// of the bucket-matched ReTrac variant (the query arrives unit-normalised).
//
// rows  [n, buckets, dim] feature values, f16 packed two per u32 (little-endian: the even
//       element in the low half) or f32 bit patterns, read in place.
// query [buckets, dim] f32.
// out   [n, buckets] f32.
//
// One workgroup per (bucket, image) pair: x is the bucket, y and z the image (past 65,535
// images z continues). Its threads stride over the bucket's features, keeping the dot product
// and the squared norm, then reduce both in workgroup memory.
// Every storage buffer is declared read_write: CubeCL may place several in one wgpu buffer.

@group(0) @binding(0) var<storage, read_write> rows: array<u32>;
@group(0) @binding(1) var<storage, read_write> query: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// Each u64 word of the launch's info is two u32s: n, buckets, dim, f16 (1) or f32 (0),
// normalise (1) or not (0).
@group(0) @binding(3) var<storage, read> info: array<u32>;

const THREADS: u32 = 128u;

var<workgroup> dots: array<f32, 128>;
var<workgroup> squares: array<f32, 128>;

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
    let buckets = info[2];
    let dim = info[4];
    let half_precision = info[6] == 1u;
    let normalise = info[8] == 1u;
    let bucket = group_id.x;
    let row = group_id.y + group_id.z * 65535u;
    let lane = local.x;

    var dot = 0.0;
    var square = 0.0;
    if (row < n) {
        let base = (row * buckets + bucket) * dim;
        for (var d = lane; d < dim; d += THREADS) {
            let x = feature(base + d, half_precision);
            dot += x * query[bucket * dim + d];
            square += x * x;
        }
    }
    dots[lane] = dot;
    squares[lane] = square;
    workgroupBarrier();
    for (var half_width = THREADS / 2u; half_width > 0u; half_width /= 2u) {
        if (lane < half_width) {
            dots[lane] += dots[lane + half_width];
            squares[lane] += squares[lane + half_width];
        }
        workgroupBarrier();
    }
    if (row < n && lane == 0u) {
        var value = dots[0];
        if (normalise) {
            value = select(0.0, dots[0] / sqrt(squares[0]), squares[0] > 0.0);
        }
        out[row * buckets + bucket] = value;
    }
}
