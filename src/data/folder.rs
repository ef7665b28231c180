//! Image folders: `DIR/<class name>/<image>.png|jpg|jpeg`, classes in sorted order. All images
//! must share one size; they are read as grey when every image is grey, else as RGB.

use std::path::{Path, PathBuf};

use super::{DataError, Dataset};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort();
    Ok(entries)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Loads every image under the class sub-directories of `dir`.
pub(crate) fn load_dir(dir: &Path) -> Result<Dataset, DataError> {
    let classes: Vec<PathBuf> = list_dir(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: no class sub-directories (expected DIR/<class>/<image>.png)",
            dir.display()
        )));
    }
    let mut decoded = Vec::new();
    for (label, class_dir) in classes.iter().enumerate() {
        for path in list_dir(class_dir)?.into_iter().filter(|p| is_image(p)) {
            let img = crate::files::read_image(&path)
                .map_err(|e| DataError::corrupt(&path, format!("cannot decode image: {e}")))?;
            decoded.push((label as u32, path, img));
        }
    }
    let Some((_, first_path, first)) = decoded.first() else {
        return Err(DataError::Invalid(format!(
            "{}: no PNG or JPEG images found",
            dir.display()
        )));
    };
    let (w, h) = (first.width(), first.height());
    if let Some((_, path, img)) = decoded.iter().find(|(_, _, i)| (i.width(), i.height()) != (w, h)) {
        return Err(DataError::corrupt(
            path,
            format!(
                "image is {}×{} but {} is {w}×{h}; all images in a folder dataset must have one size",
                img.width(),
                img.height(),
                first_path.display()
            ),
        ));
    }
    let colour = decoded.iter().any(|(_, _, i)| i.color().has_color());
    let channels = if colour { 3 } else { 1 };
    let mut pixels = Vec::with_capacity(decoded.len() * channels * (w * h) as usize);
    let mut labels = Vec::with_capacity(decoded.len());
    for (label, _, img) in &decoded {
        labels.push(*label);
        if colour {
            let rgb = img.to_rgb8();
            for c in 0..3 {
                pixels.extend(rgb.pixels().map(|p| p.0[c]));
            }
        } else {
            pixels.extend_from_slice(img.to_luma8().as_raw());
        }
    }
    let names = classes.iter().map(|p| crate::files::file_name(p)).collect();
    let ids = (0..labels.len() as u64).collect();
    Dataset::new(
        dir.display().to_string(),
        [channels, h as usize, w as usize],
        pixels,
        labels,
        ids,
        names,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, rgb: bool) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if rgb {
            image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]))
                .save(path)
                .unwrap();
        } else {
            image::GrayImage::from_pixel(w, h, image::Luma([77]))
                .save(path)
                .unwrap();
        }
    }

    #[test]
    fn reads_classes_in_order_and_promotes_to_rgb() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("b_cats/1.png"), 4, 3, false);
        write_png(&dir.path().join("a_dogs/1.png"), 4, 3, true);
        write_png(&dir.path().join("a_dogs/2.png"), 4, 3, false);
        let ds = load_dir(dir.path()).unwrap();
        assert_eq!(ds.class_names, vec!["a_dogs", "b_cats"]);
        assert_eq!(ds.labels, vec![0, 0, 1]);
        assert_eq!((ds.channels, ds.height, ds.width), (3, 3, 4));
        assert_eq!(&ds.image(0)[..1], &[10]);
        assert_eq!(&ds.image(0)[12..13], &[20]);
        assert_eq!(ds.image(2)[0], 77);
    }

    #[test]
    fn mixed_sizes_and_corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a/1.png"), 4, 4, false);
        write_png(&dir.path().join("a/2.png"), 5, 4, false);
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("one size"), "{err}");
        std::fs::remove_file(dir.path().join("a/2.png")).unwrap();
        std::fs::write(dir.path().join("a/3.png"), b"\x89PNG not really").unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot decode"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(load_dir(empty.path()).unwrap_err().to_string().contains("no class"));
    }
}
