//! CIFAR-10 binary batches (Krizhevsky 2009): records of one label byte followed by 32×32×3
//! pixels stored channel-major (all red, then green, then blue).

use std::path::Path;

use super::error::read_file;
use super::{DataError, Dataset, FormatError, Split};

/// Bytes of one CIFAR-10 record: label + 3×32×32 pixels.
const RECORD: usize = 1 + 3 * 32 * 32;
/// CIFAR-10's class names in label order.
const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Splits one binary batch into labels and C×H×W pixels. Never panics on malformed bytes.
pub fn parse_cifar_batch(bytes: &[u8]) -> Result<(Vec<u32>, Vec<u8>), FormatError> {
    if bytes.is_empty() {
        return Err(FormatError("empty file".to_owned()));
    }
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(FormatError(format!(
            "{} bytes is not a whole number of {RECORD}-byte records (truncated or not a CIFAR-10 batch)",
            bytes.len()
        )));
    }
    let mut labels = Vec::with_capacity(bytes.len() / RECORD);
    let mut pixels = Vec::with_capacity(bytes.len() / RECORD * (RECORD - 1));
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] as usize >= CLASSES.len() {
            return Err(FormatError(format!(
                "record {i} has label {}, but CIFAR-10 has 10 classes",
                record[0]
            )));
        }
        labels.push(record[0] as u32);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok((labels, pixels))
}

/// Loads the five training batches or the test batch from a `cifar-10-batches-bin` directory.
pub(crate) fn load_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_owned()],
    };
    let (mut labels, mut pixels) = (Vec::new(), Vec::new());
    for file in files {
        let path = dir.join(file);
        let (l, p) = parse_cifar_batch(&read_file(&path)?).map_err(|reason| DataError::corrupt(&path, reason.0))?;
        labels.extend(l);
        pixels.extend(p);
    }
    let ids = (0..labels.len() as u64).collect();
    let names = CLASSES.iter().map(|s| s.to_string()).collect();
    Dataset::new(dir.display().to_string(), [3, 32, 32], pixels, labels, ids, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_records_and_rejects_truncation_and_bad_labels() {
        let mut bytes = vec![0u8; 2 * RECORD];
        bytes[0] = 3;
        bytes[RECORD] = 9;
        bytes[RECORD + 1] = 200;
        let (labels, pixels) = parse_cifar_batch(&bytes).unwrap();
        assert_eq!(labels, vec![3, 9]);
        assert_eq!(pixels.len(), 2 * 3072);
        assert_eq!(pixels[3072], 200);
        assert!(
            parse_cifar_batch(&bytes[..RECORD + 10])
                .unwrap_err()
                .0
                .contains("truncated")
        );
        bytes[RECORD] = 10;
        assert!(parse_cifar_batch(&bytes).unwrap_err().0.contains("label 10"));
        assert!(parse_cifar_batch(&[]).unwrap_err().0.contains("empty"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(len in 0usize..3 * RECORD, fill in any::<u8>()) {
            let _ = parse_cifar_batch(&vec![fill; len]);
        }
    }
}
