//! The idx format of MNIST and Fashion-MNIST (LeCun et al.): a 4-byte magic (two zero bytes, a
//! type code, the number of dimensions), one big-endian u32 per dimension, then the data. Files
//! may be gzip-compressed; the gzip magic is detected, not guessed from the name.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::read_file;
use super::{DataError, Dataset, FormatError, Split};

/// Type code of unsigned bytes, the only element type image datasets use.
const TYPE_U8: u8 = 0x08;
/// Refuse absurd headers before allocating (a corrupt header must not exhaust memory).
const MAX_ELEMENTS: usize = 1 << 31;

/// A parsed idx file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of every dimension, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Parses idx bytes (gzip-compressed or not). Never panics: every malformed input is an error.
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray, FormatError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_ELEMENTS as u64 + 1024)
            .read_to_end(&mut raw)
            .map_err(|e| FormatError(format!("corrupt gzip stream: {e}")))?;
        return parse_idx(&raw);
    }
    if bytes.len() < 4 {
        return Err(FormatError(format!(
            "{} bytes is too short for an idx header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(FormatError(format!(
            "wrong magic number {:02x?}: not an idx file",
            &bytes[..4]
        )));
    }
    if bytes[2] != TYPE_U8 {
        return Err(FormatError(format!(
            "element type 0x{:02x} is not unsigned bytes (0x08)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(FormatError("idx header declares zero dimensions".to_owned()));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(FormatError(format!(
            "truncated header: {ndim} dimensions need {header} bytes, file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d).filter(|&n| n <= MAX_ELEMENTS))
        .ok_or_else(|| FormatError(format!("dimensions {dims:?} are too large")))?;
    let body = &bytes[header..];
    if body.len() < count {
        return Err(FormatError(format!(
            "truncated: dimensions {dims:?} need {count} bytes of data, found {}",
            body.len()
        )));
    }
    if body.len() > count {
        return Err(FormatError(format!(
            "{} unexpected bytes after the data of dimensions {dims:?}",
            body.len() - count
        )));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Class names of Fashion-MNIST (Xiao et al. 2017), in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    parse_idx(&read_file(path)?).map_err(|reason| DataError::corrupt(path, reason.0))
}

/// Finds `stem` or `stem.gz` in `dir`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    if let Some(found) = [&gz, &plain].into_iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Err(DataError::Io {
        path: gz,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("neither {stem} nor {stem}.gz exists"),
        ),
    })
}

/// Reads an images file and a labels file into a dataset.
pub(crate) fn load_pair(
    name: &str,
    images_path: &Path,
    labels_path: &Path,
    class_names: Vec<String>,
) -> Result<Dataset, DataError> {
    let images = read_idx(images_path)?;
    let labels = read_idx(labels_path)?;
    let [n, h, w] = images.dims[..] else {
        return Err(DataError::corrupt(
            images_path,
            format!("images need 3 dimensions (N×H×W), found {:?}", images.dims),
        ));
    };
    if labels.dims.len() != 1 {
        return Err(DataError::corrupt(
            labels_path,
            format!("labels need 1 dimension, found {:?}", labels.dims),
        ));
    }
    if labels.dims[0] != n {
        return Err(DataError::corrupt(
            labels_path,
            format!("{} labels for {n} images in {}", labels.dims[0], images_path.display()),
        ));
    }
    let labels: Vec<u32> = labels.data.iter().map(|&l| l as u32).collect();
    Dataset::new(
        name,
        [1, h, w],
        images.data,
        labels,
        (0..n as u64).collect(),
        class_names,
    )
    .map_err(|e| DataError::corrupt(labels_path, e.to_string()))
}

/// Loads the standard file pair of a split from an MNIST-style directory.
pub(crate) fn load_dir(dir: &Path, split: Split, fashion: bool) -> Result<Dataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let names: Vec<String> = if fashion {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..10).map(|d| d.to_string()).collect()
    };
    load_pair(&dir.display().to_string(), &images, &labels, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(dims: &[u32]) -> Vec<u8> {
        let mut b = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn parses_a_well_formed_file_and_its_gzip() {
        let mut bytes = header(&[2, 3]);
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let parsed = parse_idx(&bytes).unwrap();
        assert_eq!(
            parsed,
            IdxArray {
                dims: vec![2, 3],
                data: vec![1, 2, 3, 4, 5, 6]
            }
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        assert_eq!(parse_idx(&gz.finish().unwrap()).unwrap(), parsed);
    }

    #[test]
    fn malformed_files_are_errors_that_say_why() {
        let mut good = header(&[2, 2]);
        good.extend_from_slice(&[0; 4]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0], "too short"),
            (vec![1, 2, 3, 4, 0, 0, 0, 0], "wrong magic"),
            (vec![0, 0, 0x0d, 1, 0, 0, 0, 0], "not unsigned bytes"),
            (header(&[2, 2])[..7].to_vec(), "truncated header"),
            (good[..good.len() - 1].to_vec(), "truncated"),
            ([good.clone(), vec![9]].concat(), "unexpected bytes"),
            (vec![0x1f, 0x8b, 8, 0, 1, 2, 3], "corrupt gzip"),
            (header(&[u32::MAX, u32::MAX]), "too large"),
        ];
        for (bytes, needle) in cases {
            let err = parse_idx(&bytes).unwrap_err();
            assert!(err.0.contains(needle), "expected {needle:?} in {err:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_idx(&bytes);
        }

        #[test]
        fn flipped_header_bytes_never_panic(pos in 0usize..12, value in any::<u8>()) {
            let mut bytes = header(&[3, 2, 2]);
            bytes.extend_from_slice(&[7; 12]);
            bytes[pos] = value;
            if let Ok(parsed) = parse_idx(&bytes) {
                prop_assert_eq!(parsed.data.len(), parsed.dims.iter().product::<usize>());
            }
        }
    }
}
