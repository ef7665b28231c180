//! Textures of training and query images, made on first use and kept.

use std::collections::HashMap;

use egui::{ColorImage, TextureHandle, TextureOptions};

/// C×H×W bytes (grey or RGB) as an egui image.
pub fn color_image(bytes: &[u8], shape: [usize; 3]) -> ColorImage {
    let rgb = crate::data::pixels::to_rgb_image(bytes, shape, 1);
    ColorImage::from_rgb([shape[2], shape[1]], rgb.as_raw())
}

/// Training-image textures by dataset index, plus named one-off textures (queries, previews).
#[derive(Default)]
pub struct Thumbnails {
    training: HashMap<usize, TextureHandle>,
    named: HashMap<String, (Vec<u8>, TextureHandle)>,
}

impl Thumbnails {
    /// The texture of training image `i`.
    pub fn training(&mut self, ctx: &egui::Context, data: &crate::data::Dataset, i: usize) -> TextureHandle {
        self.training
            .entry(i)
            .or_insert_with(|| {
                let shape = [data.channels, data.height, data.width];
                ctx.load_texture(
                    format!("train-{i}"),
                    color_image(data.image(i), shape),
                    TextureOptions::NEAREST,
                )
            })
            .clone()
    }

    /// A texture named `name` showing `bytes`; remade only when the bytes change.
    pub fn named(&mut self, ctx: &egui::Context, name: &str, bytes: &[u8], shape: [usize; 3]) -> TextureHandle {
        if let Some((held, tex)) = self.named.get(name)
            && held == bytes
        {
            return tex.clone();
        }
        let tex = ctx.load_texture(name, color_image(bytes, shape), TextureOptions::NEAREST);
        self.named.insert(name.to_owned(), (bytes.to_vec(), tex.clone()));
        tex
    }
}

/// An image widget of `size` points for a texture, sensing clicks.
pub fn image(tex: &TextureHandle, size: f32) -> egui::Image<'static> {
    egui::Image::new(egui::load::SizedTexture::new(tex.id(), egui::vec2(size, size)))
        .fit_to_exact_size(egui::vec2(size, size))
        .sense(egui::Sense::click())
}

/// [`image`] of training image `id`, named for screen readers (and tests) "training image #id".
pub fn training_image(tex: &TextureHandle, size: f32, id: u64) -> egui::Image<'static> {
    image(tex, size).alt_text(format!("training image #{id}"))
}
