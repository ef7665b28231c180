//! Loaders on the real Fashion-MNIST files and on broken copies of them.

use crate::common;

use common::{FASHION_DIR, fashion_subset};
use retrace::data::{DataSpec, Dataset, Split};

#[test]
fn real_fashion_mnist_loads_with_balanced_classes() {
    let train = Dataset::load(&format!("fashion-mnist:{FASHION_DIR}").parse().unwrap()).unwrap();
    assert_eq!(train.len(), 60_000);
    assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
    assert_eq!(train.class_counts(), vec![6000; 10]);
    assert_eq!(train.class_name(0), "Ankle boot"); // the first training image is an ankle boot
    let test = Dataset::load(
        &format!("fashion-mnist:{FASHION_DIR}?split=test&classes=0,9&subset=50")
            .parse()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(test.len(), 50);
    assert!(test.labels.iter().all(|&l| l == 0 || l == 9));
    assert!(test.ids.windows(2).all(|w| w[0] < w[1]), "ids keep the source order");
}

#[test]
fn bundled_data_is_the_documented_prefix_of_fashion_mnist() {
    let bundled = Dataset::load(&DataSpec::bundled(Split::Train)).unwrap();
    assert_eq!(bundled.len(), 1000);
    assert_eq!(bundled.content_hash(), fashion_subset(1000).content_hash());
    let held_out = Dataset::load(&DataSpec::bundled(Split::Test)).unwrap();
    let real: DataSpec = format!("fashion-mnist:{FASHION_DIR}?split=test&subset=200")
        .parse()
        .unwrap();
    assert_eq!(held_out.content_hash(), Dataset::load(&real).unwrap().content_hash());
}

#[test]
fn broken_copies_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
    let images = std::fs::read(format!("{FASHION_DIR}/t10k-images-idx3-ubyte.gz")).unwrap();
    let labels = std::fs::read(format!("{FASHION_DIR}/t10k-labels-idx1-ubyte.gz")).unwrap();
    let spec: DataSpec = format!("fashion-mnist:{}?split=test", dir.path().display())
        .parse()
        .unwrap();
    let err = |spec: &DataSpec| Dataset::load(spec).unwrap_err().to_string();

    assert!(
        err(&spec).contains("t10k-images-idx3-ubyte"),
        "missing file is named: {}",
        err(&spec)
    );
    copy("t10k-images-idx3-ubyte.gz", &images[..images.len() / 2]);
    copy("t10k-labels-idx1-ubyte.gz", &labels);
    let e = err(&spec);
    assert!(e.contains("corrupt gzip") || e.contains("truncated"), "{e}");
    copy("t10k-images-idx3-ubyte.gz", &labels);
    assert!(err(&spec).contains("3 dimensions"), "{}", err(&spec));
    std::fs::remove_file(dir.path().join("t10k-images-idx3-ubyte.gz")).unwrap();
    copy("t10k-images-idx3-ubyte", b"\x12\x34\x56\x78");
    assert!(err(&spec).contains("wrong magic"), "{}", err(&spec));

    let empty: DataSpec = format!("fashion-mnist:{FASHION_DIR}?split=test&classes=42")
        .parse()
        .unwrap();
    assert!(err(&empty).contains("selects no image"), "{}", err(&empty));
}
