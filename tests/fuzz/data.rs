//! Fuzzing the training-data readers (idx, CIFAR-10 binary batches, image folders), data specs
//! and query images, from real Fashion-MNIST images.

use std::io::{Cursor, Write};
use std::path::Path;

use retrace::data::{DataSpec, Dataset};

use super::{Parser, Shape, campaign};

/// The first `n` bundled (real Fashion-MNIST) training images.
fn real_images(n: usize) -> Dataset {
    let spec: DataSpec = format!("bundled?subset={n}").parse().unwrap();
    Dataset::load(&spec).unwrap()
}

/// An idx file: magic (u8 data, `dims.len()` dimensions), big-endian sizes, then the bytes.
fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A PNG (or JPEG) of training image `i` of `data`, in `channels` channels.
fn encoded(data: &Dataset, i: usize, channels: usize, format: image::ImageFormat) -> Vec<u8> {
    let (h, w) = (data.height as u32, data.width as u32);
    let gray = data.image(i).to_vec();
    let image = if channels == 1 {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, gray).unwrap())
    } else {
        let rgb: Vec<u8> = gray.iter().flat_map(|&v| [v, v / 2, 255 - v]).collect();
        image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, rgb).unwrap())
    };
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn load(spec: &str) -> Result<Dataset, String> {
    let spec: DataSpec = spec.parse().map_err(|e: retrace::data::DataError| e.to_string())?;
    Dataset::load(&spec).map_err(|e| e.to_string())
}

#[test]
fn idx_files() {
    let data = real_images(16);
    let labels: Vec<u8> = data.labels.iter().map(|&l| l as u8).collect();
    let images = idx_bytes(&[16, 28, 28], &data.pixels);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_bytes(&[16], &labels)).unwrap();
    let spec = format!("fashion-mnist:{}", dir.display());
    let parser = Parser {
        name: "idx",
        seeds: vec![images.clone(), gzip(&images)],
        shape: Shape::Binary,
    };
    let (raw, gz) = (
        dir.join("train-images-idx3-ubyte"),
        dir.join("train-images-idx3-ubyte.gz"),
    );
    campaign(parser, |input, compress| {
        // A gzip member written as the .gz file; the rest as the plain file, which a gzip seed
        // also reaches (then it is read as idx, and refused).
        let gzipped = input.starts_with(&[0x1f, 0x8b]) || compress;
        let (path, other) = if gzipped { (&gz, &raw) } else { (&raw, &gz) };
        let _ = std::fs::remove_file(other);
        let bytes = if compress && !input.starts_with(&[0x1f, 0x8b]) {
            gzip(input)
        } else {
            input.to_vec()
        };
        std::fs::write(path, bytes).unwrap();
        let loaded = load(&spec)?;
        assert_eq!(loaded.pixels.len(), loaded.len() * loaded.image_len());
        Ok(())
    });
}

#[test]
fn cifar_batches() {
    let data = real_images(12);
    // Real images in CIFAR-10's record format: a label byte, then 3 planes of 32×32 (the 28×28
    // image padded by 2, the planes differing).
    let mut batch = Vec::new();
    for i in 0..data.len() {
        batch.push(data.labels[i] as u8);
        for c in 0..3u8 {
            for y in 0..32 {
                for x in 0..32 {
                    let inside = (2..30).contains(&y) && (2..30).contains(&x);
                    let v = if inside { data.image(i)[(y - 2) * 28 + x - 2] } else { 0 };
                    batch.push(v.wrapping_add(c * 40));
                }
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("test_batch.bin");
    let spec = format!("cifar10:{}?split=test", tmp.path().display());
    let parser = Parser {
        name: "cifar",
        seeds: vec![batch.clone(), batch[..3073 * 2].to_vec()],
        shape: Shape::Binary,
    };
    campaign(parser, |input, _| {
        std::fs::write(&path, input).unwrap();
        let loaded = load(&spec)?;
        assert_eq!([loaded.channels, loaded.height, loaded.width], [3, 32, 32]);
        Ok(())
    });
}

#[test]
fn image_folders() {
    let data = real_images(6);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (class, range) in [("coat", 0..2), ("shirt", 2..4)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in range {
            std::fs::write(
                root.join(class).join(format!("{i}.png")),
                encoded(&data, i, 1, image::ImageFormat::Png),
            )
            .unwrap();
        }
    }
    let parser = Parser {
        name: "folder",
        seeds: vec![
            encoded(&data, 4, 1, image::ImageFormat::Png),
            encoded(&data, 5, 1, image::ImageFormat::Jpeg),
        ],
        shape: Shape::Binary,
    };
    let spec = format!("folder:{}", root.display());
    let (png, jpg) = (root.join("shirt/x.png"), root.join("shirt/x.jpg"));
    campaign(parser, |input, as_jpeg| {
        let (path, other) = if as_jpeg { (&jpg, &png) } else { (&png, &jpg) };
        let _ = std::fs::remove_file(other);
        std::fs::write(path, input).unwrap();
        let loaded = load(&spec)?;
        assert_eq!(loaded.len(), 5);
        Ok(())
    });
}

#[test]
fn data_specs() {
    let seeds = [
        "bundled",
        "bundled?split=test&subset=50",
        "fashion-mnist:/usr/share/datasets/fashion-mnist?classes=0,3,7&subset=1000",
        "fashion-mnist:/usr/share/datasets/fashion-mnist?offset=1000&subset=1000",
        "mnist:/data/mnist?split=test",
        "cifar10:/data/cifar-10-batches-bin?classes=1,7&subset=5000&split=train",
        "cifar2:/data/cifar",
        "folder:/home/me/images",
    ];
    let parser = Parser {
        name: "data-spec",
        seeds: seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
        shape: Shape::Binary,
    };
    campaign(parser, |input, _| {
        let text = std::str::from_utf8(input).map_err(|e| format!("not UTF-8: {e}"))?;
        let spec: DataSpec = text.parse().map_err(|e: retrace::data::DataError| e.to_string())?;
        // What a spec prints reads back as the same spec.
        let again: DataSpec = spec
            .to_string()
            .parse()
            .map_err(|e| format!("{spec} does not read back: {e}"))?;
        assert_eq!(again, spec, "{text:?} prints as {spec}");
        Ok(())
    });
}

#[test]
fn query_images() {
    let data = real_images(3);
    let tmp = tempfile::tempdir().unwrap();
    let parser = Parser {
        name: "query-image",
        seeds: vec![
            encoded(&data, 0, 1, image::ImageFormat::Png),
            encoded(&data, 1, 3, image::ImageFormat::Png),
            encoded(&data, 2, 1, image::ImageFormat::Jpeg),
        ],
        shape: Shape::Binary,
    };
    let (png, jpg) = (tmp.path().join("query.png"), tmp.path().join("query.jpg"));
    campaign(parser, |input, as_jpeg| {
        let path: &Path = if as_jpeg { &jpg } else { &png };
        std::fs::write(path, input).unwrap();
        let query = retrace::attribution::query::load_query_image(path, 1, 28).map_err(|e| e.to_string())?;
        assert_eq!(query.pixels.len(), 28 * 28);
        let region = retrace::attribution::query::load_region(path, 28).map_err(|e| e.to_string())?;
        assert_eq!(region.len(), 28 * 28);
        Ok(())
    });
}
