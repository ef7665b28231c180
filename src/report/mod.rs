//! Visual reports of an attribution run: a self-contained HTML page (images inlined as PNG
//! data URIs, plots as inline SVG) with the query, every method's top proponents and
//! opponents with scores and labels, per-timestep curves, the agreement between methods, and
//! every parameter, the retrace version and the device — and the same content as a PDF.
//!
//! [`content`] gathers what a report shows; [`html`] and [`pdf`] render it.

pub mod content;
pub mod error;
pub mod html;
#[cfg(feature = "pdf")]
pub mod pdf;
pub mod plot;
pub mod scores_file;

use std::path::Path;

pub use content::{ReportContent, ReportInput};
pub use error::ReportError;
pub use html::html_report;
#[cfg(feature = "pdf")]
pub use pdf::pdf_report;
pub use scores_file::{ScoresForReport, read_scores_file};

use base64::Engine;

/// The file formats a report is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// One self-contained HTML page.
    Html,
    /// A PDF of A4 pages.
    Pdf,
}

impl ReportFormat {
    /// The format a path's extension names (`.html`/`.htm` or `.pdf`, any case).
    pub fn from_path(path: &Path) -> Result<Self, ReportError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("html" | "htm") => Ok(Self::Html),
            Some("pdf") => Ok(Self::Pdf),
            _ => Err(ReportError::Unsupported(format!(
                "{}: reports are written as .html or .pdf; the extension picks the format",
                path.display()
            ))),
        }
    }
}

/// Renders the report in `format`.
pub fn render(input: &ReportInput<'_>, format: ReportFormat) -> Result<Vec<u8>, ReportError> {
    let content = ReportContent::new(input);
    match format {
        ReportFormat::Html => Ok(html_report(&content).into_bytes()),
        #[cfg(feature = "pdf")]
        ReportFormat::Pdf => pdf_report(&content),
        #[cfg(not(feature = "pdf"))]
        ReportFormat::Pdf => Err(ReportError::Unsupported(
            "this retrace was built without PDF reports (the `pdf` feature); write the report as .html".into(),
        )),
    }
}

/// Writes the report to `path` (atomically) in the format its extension names.
pub fn write_report(path: &Path, input: &ReportInput<'_>) -> Result<(), ReportError> {
    let bytes = render(input, ReportFormat::from_path(path)?)?;
    Ok(crate::files::write_atomic(path, &bytes)?)
}

/// C×H×W bytes (grey or RGB) as a PNG data URI, scaled up `scale`× (nearest neighbour).
pub fn png_data_uri(bytes: &[u8], shape: [usize; 3], scale: u32) -> String {
    rgb_png_data_uri(&crate::data::pixels::to_rgb_image(bytes, shape, scale))
}

/// An RGB image as a PNG data URI (empty if it cannot be encoded).
pub fn rgb_png_data_uri(img: &image::RgbImage) -> String {
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
pub fn decode_png_data_uri(uri: &str, channels: usize) -> Result<(Vec<u8>, [usize; 3]), ReportError> {
    let b64 = uri
        .strip_prefix("data:image/png;base64,")
        .ok_or_else(|| ReportError::Invalid("the image is not a PNG data URI".into()))?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ReportError::Invalid(format!("the image's base64 is damaged: {e}")))?;
    let img = image::load_from_memory(&png)
        .map_err(|e| ReportError::Invalid(format!("the image is not a readable PNG: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let bytes = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        let rgb = img.to_rgb8();
        (0..3).flat_map(|c| rgb.pixels().map(move |p| p[c])).collect()
    };
    Ok((bytes, [channels.min(3), h, w]))
}
