//! Visual reports of an attribution run: a self-contained HTML page (images inlined as PNG
//! data URIs, plots as inline SVG) with the query, every method's top proponents and
//! opponents with scores and labels, per-timestep curves, the agreement between methods, and
//! every parameter, the retrace version and the device.

pub mod html;
pub mod plot;

pub use html::{ReportInput, html_report};

use base64::Engine;

/// C×H×W bytes (grey or RGB) as a PNG data URI, scaled up `scale`× (nearest neighbour).
pub fn png_data_uri(bytes: &[u8], shape: [usize; 3], scale: u32) -> String {
    let img = crate::diffusion::images::to_rgb_image(bytes, shape, scale);
    let mut png = Vec::new();
    if img
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .is_err()
    {
        return String::new();
    }
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// Decodes a PNG data URI (as [`png_data_uri`] writes) into C×H×W bytes with `channels`
/// channels (1: grey, 3: RGB).
pub fn decode_png_data_uri(uri: &str, channels: usize) -> Result<(Vec<u8>, [usize; 3]), String> {
    let b64 = uri
        .strip_prefix("data:image/png;base64,")
        .ok_or("the image is not a PNG data URI")?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the image's base64 is damaged: {e}"))?;
    let img = image::load_from_memory(&png).map_err(|e| format!("the image is not a readable PNG: {e}"))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let bytes = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        let rgb = img.to_rgb8();
        (0..3).flat_map(|c| rgb.pixels().map(move |p| p[c])).collect()
    };
    Ok((bytes, [channels.min(3), h, w]))
}
