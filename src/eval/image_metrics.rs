//! How much a regenerated image differs from the one generated before a removal: pixel mean
//! squared error, and SSIM exactly as torchmetrics computes it with the settings of Serrà et
//! al.'s evaluation (sony/mucs `lib/image_metrics.py`: `StructuralSimilarityIndexMeasure(
//! data_range=1.0, kernel_size=7, sigma=1.5, gaussian_kernel=True)`). Images are C×H×W values
//! in [0, 1].

/// Standard deviation of SSIM's gaussian window.
pub const SSIM_SIGMA: f64 = 1.5;
/// SSIM's luminance constant K1.
pub const SSIM_K1: f64 = 0.01;
/// SSIM's contrast constant K2.
pub const SSIM_K2: f64 = 0.03;

/// The mean squared difference of two images (sony/mucs `mse`).
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "images of different sizes");
    if a.is_empty() {
        return 0.0;
    }
    a.iter().zip(b).map(|(&x, &y)| f64::from(x - y).powi(2)).sum::<f64>() / a.len() as f64
}

/// The width of the gaussian window torchmetrics uses for `sigma`: with `gaussian_kernel=True`
/// it ignores `kernel_size` and takes 2·⌊3.5σ + 0.5⌋ + 1 (11 for σ = 1.5, so MUCS's
/// `kernel_size=7` has no effect).
fn window(sigma: f64) -> usize {
    2 * ((3.5 * sigma + 0.5) as usize) + 1
}

/// The normalised 1-D gaussian of `size` taps.
fn gaussian_taps(size: usize, sigma: f64) -> Vec<f64> {
    let half = (size as f64 - 1.0) / 2.0;
    let raw: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - half) / sigma).powi(2) / 2.0).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| v / sum).collect()
}

/// Index `i` of a row of `n` values reflected at its ends without repeating the edge (torch's
/// `reflect` padding: −1 → 1, n → n − 2), folded again for pads wider than the row.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// `plane` (h×w) smoothed by the separable window `taps` over its reflection-padded copy: the
/// "valid" convolution of the padded plane, h×w again.
fn smooth(plane: &[f64], h: usize, w: usize, taps: &[f64]) -> Vec<f64> {
    let across = blur_rows_transposed(plane, h, w, taps);
    blur_rows_transposed(&across, w, h, taps)
}

/// Every row of `plane` (h×w) blurred by `taps` over its reflection, written transposed (w×h),
/// so that two calls blur both ways.
fn blur_rows_transposed(plane: &[f64], h: usize, w: usize, taps: &[f64]) -> Vec<f64> {
    let pad = (taps.len() / 2) as isize;
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            out[x * h + y] = taps
                .iter()
                .enumerate()
                .map(|(k, t)| t * plane[y * w + reflect(x as isize + k as isize - pad, w)])
                .sum();
        }
    }
    out
}

/// The structural similarity of two C×H×W images in [0, 1] as torchmetrics computes it with
/// MUCS's settings: each channel reflection-padded by half the gaussian window, local means,
/// variances and covariance from the window, SSIM's map (variances clamped at 0) averaged over
/// every pixel and channel. 1 for identical images. Planes narrower than the pad (which torch
/// refuses) are reflected again.
pub fn ssim(a: &[f32], b: &[f32], [c, h, w]: [usize; 3]) -> f64 {
    assert_eq!(a.len(), c * h * w, "the first image is not C×H×W");
    assert_eq!(b.len(), c * h * w, "the second image is not C×H×W");
    if a.is_empty() {
        return 1.0;
    }
    let taps = gaussian_taps(window(SSIM_SIGMA), SSIM_SIGMA);
    let (c1, c2) = (SSIM_K1.powi(2), SSIM_K2.powi(2));
    let mut total = 0.0;
    for channel in 0..c {
        let plane = |img: &[f32]| -> Vec<f64> {
            img[channel * h * w..(channel + 1) * h * w]
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        };
        let (x, y) = (plane(a), plane(b));
        let product = |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(u, v)| u * v).collect() };
        let mu_x = smooth(&x, h, w, &taps);
        let mu_y = smooth(&y, h, w, &taps);
        let xx = smooth(&product(&x, &x), h, w, &taps);
        let yy = smooth(&product(&y, &y), h, w, &taps);
        let xy = smooth(&product(&x, &y), h, w, &taps);
        for i in 0..h * w {
            let (mx, my) = (mu_x[i], mu_y[i]);
            let var_x = (xx[i] - mx * mx).max(0.0);
            let var_y = (yy[i] - my * my).max(0.0);
            let cov = xy[i] - mx * my;
            total += ((2.0 * mx * my + c1) * (2.0 * cov + c2)) / ((mx * mx + my * my + c1) * (var_x + var_y + c2));
        }
    }
    total / (c * h * w) as f64
}

/// One minus the cosine of two feature vectors (0 for parallel, 1 for orthogonal; 0 when either
/// is zero, where the cosine is undefined and the images are treated as alike).
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    1.0 - dot / (na * nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The images the reference values were computed on: a hashed pattern and a smooth wave.
    fn hashed(n: usize, mul: usize, add: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * mul + add) % 101) as f32 / 100.0).collect()
    }

    fn wave([c, h, w]: [usize; 3]) -> Vec<f32> {
        let mut v = Vec::with_capacity(c * h * w);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    v.push((0.5 + 0.4 * (0.3 * x as f64 + 0.2 * y as f64 + ch as f64).sin()) as f32);
                }
            }
        }
        v
    }

    /// Values torchmetrics 1.9.0 gives (float64, `StructuralSimilarityIndexMeasure(data_range=1.0,
    /// kernel_size=7, sigma=1.5, gaussian_kernel=True)`) on the same images: noise against noise,
    /// a wave against its contrast-reduced copy, a wave against itself, noise against the wave.
    #[test]
    fn ssim_matches_torchmetrics() {
        let cases: [([usize; 3], [f64; 4]); 2] = [
            (
                [1, 28, 28],
                [0.03316596972388071, 0.9905844583117439, 1.0, 0.008238616240393723],
            ),
            (
                [3, 16, 12],
                [0.03148913590308203, 0.9888592976130783, 1.0, 0.018946437542371672],
            ),
        ];
        for (shape, expected) in cases {
            let n = shape.iter().product();
            let (a, b) = (hashed(n, 37, 0), hashed(n, 41, 3));
            let s = wave(shape);
            let t: Vec<f32> = s.iter().map(|v| v * 0.9 + 0.05).collect();
            let got = [
                ssim(&a, &b, shape),
                ssim(&s, &t, shape),
                ssim(&s, &s, shape),
                ssim(&a, &s, shape),
            ];
            for (g, e) in got.iter().zip(expected) {
                // The images are f32 here (torchmetrics' were float64 of the same formula).
                assert!((g - e).abs() < 1e-5, "{shape:?}: {got:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn reflection_repeats_no_edge_and_folds_wide_pads() {
        let row: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(row, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect(-7, 3), 1);
        assert_eq!(window(1.5), 11);
    }

    #[test]
    fn distances_vanish_on_equal_inputs() {
        let a = hashed(50, 7, 1);
        assert_eq!(mse(&a, &a), 0.0);
        assert!(cosine_distance(&a, &a).abs() < 1e-12);
        assert!((mse(&[0.0, 1.0], &[1.0, 1.0]) - 0.5).abs() < 1e-12);
        assert!((cosine_distance(&[1.0, 0.0], &[0.0, 2.0]) - 1.0).abs() < 1e-12);
    }
}
