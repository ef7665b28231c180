//! Host-side pixel helpers, no tensors: bytes ↔ values in [−1, 1] (the model's range), RGB
//! images scaled up for display, and PNG grids. The viewer, the reports and the CLI use these;
//! tensor conversions are in `crate::diffusion::images`.

/// Maps bytes 0..=255 to [−1, 1].
pub fn bytes_to_unit(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|&b| b as f32 / 127.5 - 1.0).collect()
}

/// Maps [−1, 1] back to bytes, clamping and rounding.
pub fn unit_to_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
        .collect()
}

/// C×H×W bytes (grey or RGB) as an RGB image, each pixel repeated `scale`× (nearest neighbour).
pub fn to_rgb_image(bytes: &[u8], [c, h, w]: [usize; 3], scale: u32) -> image::RgbImage {
    let scale = scale.max(1);
    image::RgbImage::from_fn(w as u32 * scale, h as u32 * scale, |x, y| {
        let p = (y / scale) as usize * w + (x / scale) as usize;
        let px = |ch: usize| bytes[ch.min(c - 1) * h * w + p];
        image::Rgb([px(0), px(1), px(2)])
    })
}

/// Lays C×H×W byte images out in a grid with `cols` columns and a 2-pixel gap, as an RGB image.
pub fn grid(images: &[Vec<u8>], [c, h, w]: [usize; 3], cols: usize) -> image::RgbImage {
    let cols = cols.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(cols).max(1);
    let gap = 2;
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut out = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([40, 40, 40]));
    for (k, img) in images.iter().enumerate() {
        let (ox, oy) = (gap + (k % cols) * (w + gap), gap + (k / cols) * (h + gap));
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| img[(ch.min(c - 1) * h + y) * w + x];
                out.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb([px(0), px(1), px(2)]));
            }
        }
    }
    out
}

/// `pixels` (C×H×W) times the H×W `region` weights, channel by channel: an image seen through
/// a painted region.
pub fn weighted_by_region(pixels: &[f32], region: &[f32]) -> Vec<f32> {
    pixels.iter().zip(region.iter().cycle()).map(|(p, w)| p * w).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_unit_round_trip_is_exact() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unit_to_bytes(&bytes_to_unit(&bytes)), bytes);
    }

    #[test]
    fn grid_places_images() {
        let imgs = vec![vec![255u8; 4], vec![0u8; 4], vec![128u8; 4]];
        let g = grid(&imgs, [1, 2, 2], 2);
        assert_eq!(g.dimensions(), (2 * 4 + 2, 2 * 4 + 2));
        assert_eq!(g.get_pixel(2, 2).0, [255, 255, 255]);
        assert_eq!(g.get_pixel(6, 2).0, [0, 0, 0]);
        assert_eq!(g.get_pixel(2, 6).0, [128, 128, 128]);
    }
}
