//! What a report shows, independent of its format: the HTML and PDF renderers draw the same
//! [`ReportContent`], so the two files never disagree.

use super::plot::PlotGeometry;
use crate::attribution::Scores;
use crate::data::Dataset;
use crate::stats::{overlap_at_k, spearman};

/// What a report is made from.
pub struct ReportInput<'a> {
    /// The query's pixels as bytes (C×H×W).
    pub query: &'a [u8],
    /// How the query was made.
    pub query_description: &'a str,
    /// The region the scores attribute (H×W weights), for a region query.
    pub region: Option<&'a [f32]>,
    /// The training data the scores index.
    pub data: &'a Dataset,
    /// One entry per method.
    pub methods: &'a [Scores],
    /// Images per side (proponents, opponents) and for agreement figures.
    pub top_k: usize,
    /// The compute device, as shown to the user.
    pub device: &'a str,
    /// The model directory.
    pub model: &'a str,
}

/// An image with its caption, at its native resolution (renderers scale it up).
pub struct Tile {
    /// The pixels as RGB.
    pub image: image::RgbImage,
    /// Alternative text ("training image #546").
    pub alt: String,
    /// Caption lines: rank and score, then label and id.
    pub caption: [String; 2],
}

/// One method's part of the report.
pub struct MethodSection {
    /// The method's name ("retrac").
    pub name: String,
    /// What it computes, from the method registry (empty for a name it does not know).
    pub summary: String,
    /// The top-k proponents, best first.
    pub proponents: Vec<Tile>,
    /// The top-k opponents, most negative first.
    pub opponents: Vec<Tile>,
    /// Per-timestep scores of the top 5 proponents (absent for single-bucket methods).
    pub curves: Option<PlotGeometry>,
    /// Every parameter of the run, as pretty JSON.
    pub parameters: String,
}

/// Agreement between two methods.
pub struct AgreementRow {
    /// "a / b".
    pub pair: String,
    /// Fraction of shared images among the two top-k.
    pub overlap: f64,
    /// Spearman rank correlation over all training images.
    pub spearman: f64,
}

/// Everything a report shows, laid out in reading order.
pub struct ReportContent {
    /// "retrace 0.1.0 · device … · model … · data … (N training images)".
    pub meta: String,
    /// The query image; its first caption line says how it was made.
    pub query: Tile,
    /// Images per side.
    pub top_k: usize,
    /// One section per method, in the input's order.
    pub sections: Vec<MethodSection>,
    /// Every pair of methods (empty for a single method).
    pub agreement: Vec<AgreementRow>,
}

/// Width and height the per-timestep plot is laid out in.
pub const CURVES_SIZE: [f64; 2] = [720.0, 240.0];

impl ReportContent {
    /// Gathers what the report shows from scores and the training data.
    pub fn new(input: &ReportInput<'_>) -> Self {
        let data = input.data;
        let shape = [data.channels, data.height, data.width];
        let rgb = |bytes: &[u8]| crate::data::pixels::to_rgb_image(bytes, shape, 1);
        let totals: Vec<Vec<f64>> = input.methods.iter().map(|s| s.totals()).collect();
        let k = input.top_k.min(data.len());
        let tiles = |order: &[usize], totals: &[f64], rank_of: &dyn Fn(usize) -> usize| -> Vec<Tile> {
            order
                .iter()
                .enumerate()
                .map(|(r, &i)| Tile {
                    image: rgb(data.image(i)),
                    alt: format!("training image #{}", data.ids[i]),
                    caption: [
                        format!("#{} · {:.3e}", rank_of(r), totals[i]),
                        format!("{} (id {})", data.class_name(i), data.ids[i]),
                    ],
                })
                .collect()
        };
        let sections = input
            .methods
            .iter()
            .zip(&totals)
            .map(|(s, t)| {
                let order = s.ranking();
                let n = order.len();
                let opponents: Vec<usize> = order.iter().rev().take(k).copied().collect();
                let series: Vec<(String, Vec<[f64; 2]>)> = order
                    .iter()
                    .take(5)
                    .map(|&i| (format!("#{} {}", data.ids[i], data.class_name(i)), s.bucket_curve(i)))
                    .collect();
                MethodSection {
                    name: s.method.clone(),
                    summary: crate::attribution::registry::lookup(&s.method)
                        .map(|m| m.summary().to_owned())
                        .unwrap_or_default(),
                    proponents: tiles(&order[..k.min(n)], t, &|r| r + 1),
                    opponents: tiles(&opponents, t, &|r| n - r),
                    curves: (s.buckets.len() > 1)
                        .then(|| PlotGeometry::layout(&series, "diffusion step t", CURVES_SIZE[0], CURVES_SIZE[1]))
                        .flatten(),
                    parameters: serde_json::to_string_pretty(&s.parameters).unwrap_or_default(),
                }
            })
            .collect();
        let mut agreement = Vec::new();
        for a in 0..input.methods.len() {
            for b in a + 1..input.methods.len() {
                agreement.push(AgreementRow {
                    pair: format!("{} / {}", input.methods[a].method, input.methods[b].method),
                    overlap: overlap_at_k(&totals[a], &totals[b], k),
                    spearman: spearman(&totals[a], &totals[b]),
                });
            }
        }
        Self {
            meta: format!(
                "retrace {} · device {} · model {} · data {} ({} training images)",
                crate::VERSION,
                input.device,
                input.model,
                data.name,
                data.len()
            ),
            query: Tile {
                image: match input.region {
                    Some(region) => with_region(rgb(input.query), region),
                    None => rgb(input.query),
                },
                alt: "query".to_owned(),
                caption: [
                    input.query_description.to_owned(),
                    input.region.map(describe_region).unwrap_or_default(),
                ],
            },
            top_k: k,
            sections,
            agreement,
        }
    }
}

/// The query with everything outside the region dimmed and tinted blue, in proportion to how
/// far outside it a pixel is (its weight).
pub fn with_region(mut image: image::RgbImage, region: &[f32]) -> image::RgbImage {
    let width = image.width() as usize;
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        let w = region
            .get(y as usize * width + x as usize)
            .copied()
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        let [r, g, b] = pixel.0.map(|v| v as f32);
        let keep = 0.3 + 0.7 * w;
        let tint = 60.0 * (1.0 - w);
        pixel.0 = [r * keep, g * keep, (b * keep + tint).min(255.0)].map(|v| v.round() as u8);
    }
    image
}

/// "attributed region: 23% of the image (dimmed outside)".
pub fn describe_region(region: &[f32]) -> String {
    let share = region.iter().map(|&w| w as f64).sum::<f64>() / region.len().max(1) as f64;
    format!("attributed region: {:.0}% of the image (dimmed outside)", 100.0 * share)
}
