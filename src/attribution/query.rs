//! Queries: a generated sample or a loaded image, converted to what the model takes.

use super::error::AttributionError;
use crate::diffusion::Condition;

use std::path::Path;

use image::imageops::FilterType;

/// A query image in the model's format.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// C×H×W values in [−1, 1].
    pub pixels: Vec<f32>,
    /// C, H, W.
    pub shape: [usize; 3],
    /// Where it came from and how it was converted.
    pub description: String,
    /// The sampling trajectory, for a generated query.
    pub trajectory: Option<Trajectory>,
    /// Per-pixel weights in [0, 1] (H×W) of the region to attribute; `None` for the whole image.
    pub mask: Option<Vec<f32>>,
    /// The condition it is attributed under: the class a sample was generated for, or the one
    /// given with a loaded image (an unconditional model ignores it).
    pub condition: Condition,
    /// For a sample of a latent model, the latent it was generated as (model units): what the
    /// methods attribute, instead of encoding the decoded `pixels` again. `None` for a loaded
    /// image (encoded when attributed) and for a pixel-space model.
    pub latent: Option<Vec<f32>>,
}

/// A generated query's denoising trajectory: after every sampling step, the step t the model
/// was evaluated at and its estimate of the clean input x̂₀ (what Journey-TRAK attributes).
#[derive(Clone, Debug, PartialEq)]
pub struct Trajectory {
    /// t of every sampling step, noisiest first.
    pub steps: Vec<usize>,
    /// x̂₀ after every step in the network's space (pixels in [−1, 1], or a latent model's
    /// latents), concatenated.
    pub predicted_clean: Vec<f32>,
    /// For a latent model, every x̂₀ decoded to pixels (concatenated); `None` when
    /// `predicted_clean` is pixels already.
    pub decoded: Option<Vec<f32>>,
}

impl Trajectory {
    /// x̂₀ of sampling step `s`, in the network's space.
    pub fn predicted_clean(&self, s: usize) -> &[f32] {
        step_slice(&self.predicted_clean, self.steps.len(), s)
    }

    /// x̂₀ of sampling step `s` as an image (C×H×W pixels in [−1, 1]).
    pub fn image(&self, s: usize) -> &[f32] {
        match &self.decoded {
            Some(decoded) => step_slice(decoded, self.steps.len(), s),
            None => self.predicted_clean(s),
        }
    }
}

/// Step `s`'s part of `values`, which holds `steps` equal parts.
fn step_slice(values: &[f32], steps: usize, s: usize) -> &[f32] {
    let len = values.len() / steps.max(1);
    &values[s * len..(s + 1) * len]
}

impl Query {
    /// A whole-image query with no trajectory.
    pub fn image(pixels: Vec<f32>, shape: [usize; 3], description: impl Into<String>) -> Self {
        Self {
            pixels,
            shape,
            description: description.into(),
            trajectory: None,
            mask: None,
            condition: Condition::Unconditional,
            latent: None,
        }
    }

    /// This query, attributed under `condition` (a loaded image given a class).
    pub fn under(self, condition: Condition) -> Self {
        Self { condition, ..self }
    }
}

/// Loads an image file and converts it to `channels`×`size`×`size` (grey or RGB, resized with a
/// Lanczos filter), saying what was done.
pub fn load_query_image(path: &Path, channels: usize, size: usize) -> Result<Query, AttributionError> {
    let img = crate::files::read_image(path)
        .map_err(|e| AttributionError::Request(format!("cannot read the query image {}: {e}", path.display())))?;
    let (w, h) = (img.width(), img.height());
    let mut notes = Vec::new();
    if (w as usize, h as usize) != (size, size) {
        notes.push(format!("resized {w}x{h} to {size}x{size}"));
    }
    let colour = format!("{:?}", img.color());
    let pixels: Vec<f32> = if channels == 1 {
        if img.color().has_color() || img.color().has_alpha() {
            notes.push(format!("converted {colour} to grey"));
        }
        let grey = image::imageops::resize(&img.to_luma8(), size as u32, size as u32, FilterType::Lanczos3);
        grey.as_raw().iter().map(|&b| b as f32 / 127.5 - 1.0).collect()
    } else {
        if !img.color().has_color() || img.color().has_alpha() {
            notes.push(format!("converted {colour} to RGB"));
        }
        let rgb = image::imageops::resize(&img.to_rgb8(), size as u32, size as u32, FilterType::Lanczos3);
        (0..3)
            .flat_map(|c| {
                rgb.pixels()
                    .map(move |p| p.0[c] as f32 / 127.5 - 1.0)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let how = if notes.is_empty() {
        "used as is".to_owned()
    } else {
        notes.join(", ")
    };
    Ok(Query::image(
        pixels,
        [channels, size, size],
        format!("{} ({how})", path.display()),
    ))
}

/// Loads a region mask: a grey image (any format the `image` crate reads, converted to grey) of
/// the query's `size`×`size`, or of a whole multiple of it (a mask painted at a zoom), which is
/// averaged down; white pixels are in the region, grey ones partly. Refused when it has another
/// shape (it would be stretched over pixels it was not drawn on) or marks no pixel.
pub fn load_region(path: &Path, size: usize) -> Result<Vec<f32>, AttributionError> {
    let img = crate::files::read_image(path)
        .map_err(|e| AttributionError::Request(format!("cannot read the region mask {}: {e}", path.display())))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width != height || size == 0 || !width.is_multiple_of(size) || width < size {
        return Err(AttributionError::Request(format!(
            "the region mask {} is {width}×{height} pixels but the query is {size}×{size}: draw the mask \
             at the query's size (or a whole multiple of it, e.g. {}×{})",
            path.display(),
            size * 10,
            size * 10
        )));
    }
    let grey = image::imageops::resize(&img.to_luma8(), size as u32, size as u32, FilterType::Triangle);
    let region: Vec<f32> = grey.as_raw().iter().map(|&b| b as f32 / 255.0).collect();
    if region.iter().all(|&w| w == 0.0) {
        return Err(AttributionError::Request(format!(
            "the region mask {} is all black: it marks no pixel",
            path.display()
        )));
    }
    Ok(region)
}

/// Generates a query from the newest checkpoint of `model` with `seed` under `condition` (with
/// the guidance `config` asks for); the query keeps the condition. `frame(step, steps, pixels)` sees the model's current estimate of the clean image (C×H×W in [−1, 1]) after every
/// denoising step, for live previews.
pub fn generate_query(
    model: &crate::diffusion::ModelDir,
    seed: u64,
    condition: Condition,
    config: &crate::diffusion::SamplerConfig,
    device: &burn::tensor::Device,
    job: &crate::jobs::JobContext,
    mut frame: impl FnMut(usize, usize, &[f32]),
) -> Result<Query, AttributionError> {
    config.validate(model.info.schedule.steps)?;
    let (net, entry) = model.load_latest(device)?;
    let latent_space = model.latent_space(device)?;
    let shape = model.info.architecture.shape();
    let schedule = crate::diffusion::Schedule::new(&model.info.schedule);
    let mut trajectory = Trajectory {
        steps: Vec::new(),
        predicted_clean: Vec::new(),
        decoded: latent_space.as_ref().map(|_| Vec::new()),
    };
    let mut failure = None;
    let sampled = crate::diffusion::sample(&net, &schedule, config, shape, &[seed], &[condition], device, |step| {
        job.report("sampling", step.done as u64, step.total as u64, "");
        let read = crate::device::read_back(step.predicted_clean.clone()).and_then(|clean| {
            let image = match &latent_space {
                Some(space) => crate::device::read_back(space.decode(step.predicted_clean.clone()))?,
                None => clean.clone(),
            };
            Ok((clean, image))
        });
        match read {
            Ok((clean, image)) => {
                frame(step.done, step.total, &image);
                trajectory.steps.push(step.t);
                trajectory.predicted_clean.extend(clean);
                if let Some(decoded) = &mut trajectory.decoded {
                    decoded.extend(image);
                }
            }
            Err(e) => failure = Some(e),
        }
        failure.is_none() && !job.cancel.is_cancelled()
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    let Some(x) = sampled? else {
        return Err(AttributionError::Cancelled);
    };
    let (pixels, latent) = match &latent_space {
        Some(space) => (
            crate::device::read_back(space.decode(x.clone()))?,
            Some(crate::device::read_back(x)?),
        ),
        None => (crate::device::read_back(x)?, None),
    };
    let guidance = if config.is_guided() {
        format!(", guidance {}", config.guidance_scale)
    } else {
        String::new()
    };
    let class = match condition {
        Condition::Unconditional => String::new(),
        c => format!(", {}", c.describe(&model.info.class_names)),
    };
    Ok(Query {
        trajectory: Some(trajectory),
        condition,
        latent,
        ..Query::image(
            pixels,
            model.info.image_shape(),
            format!(
                "sample seed {seed}{class}, {:?} {} steps{guidance}, checkpoint step {}",
                config.kind, config.steps, entry.state.step
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_converted_and_the_conversion_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.png");
        image::RgbaImage::from_pixel(40, 30, image::Rgba([255, 255, 255, 255]))
            .save(&path)
            .unwrap();
        let q = load_query_image(&path, 1, 28).unwrap();
        assert_eq!(q.pixels.len(), 784);
        assert!(q.pixels.iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(
            q.description.contains("resized 40x30 to 28x28") && q.description.contains("to grey"),
            "{}",
            q.description
        );
        std::fs::write(&path, b"not a png").unwrap();
        assert!(
            load_query_image(&path, 1, 28)
                .unwrap_err()
                .to_string()
                .contains("cannot read the query image")
        );
    }
}
