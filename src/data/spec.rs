use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::DataError;

/// Which split of a dataset with a train/test division to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split.
    #[default]
    Train,
    /// The held-out split (`t10k` files for idx, `test_batch.bin` for CIFAR-10).
    Test,
}

/// The on-disk format a spec names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// A directory of idx files (`train-images-idx3-ubyte[.gz]`, …). `fashion` chooses the
    /// Fashion-MNIST class names over the digits.
    Idx {
        /// Use Fashion-MNIST's class names.
        fashion: bool,
    },
    /// A directory of CIFAR-10 binary batches (`data_batch_*.bin`, `test_batch.bin`).
    Cifar10,
    /// A directory with one sub-directory of PNG/JPEG images per class.
    Folder,
    /// The Fashion-MNIST subset shipped in `assets/`.
    Bundled,
}

impl DataFormat {
    fn keyword(self) -> &'static str {
        match self {
            DataFormat::Idx { fashion: true } => "fashion-mnist",
            DataFormat::Idx { fashion: false } => "mnist",
            DataFormat::Cifar10 => "cifar10",
            DataFormat::Folder => "folder",
            DataFormat::Bundled => "bundled",
        }
    }
}

/// A dataset named as `FORMAT:PATH?option=value&…` (or just `bundled[?…]`).
///
/// Formats: `mnist`, `fashion-mnist` (idx directories), `cifar10`, `folder`, `bundled`, and
/// `cifar2`, the CIFAR-2 of the attribution papers (D-TRAK, Zheng et al. 2024; Mlodozeniec et
/// al. 2024): CIFAR-10's automobiles and horses, 5,000 images (short for
/// `cifar10:DIR?classes=1,7&subset=5000`, which is how it prints; the first 5,000 in file
/// order, where the papers draw 5,000 at random; CIFAR-10's files are in random order).
/// Options: `split=train|test`, `classes=0,3,7` (keep these labels), `offset=N` (skip the first N
/// images after the class filter), `subset=N` (then keep the first N, in file order). An image's
/// id stays its position in the file, so `offset=1000&subset=1000` names images 1,000–1,999,
/// disjoint from `subset=1000`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSpec {
    /// File format.
    pub format: DataFormat,
    /// Directory holding the files (empty for `bundled`).
    pub path: PathBuf,
    /// Split to read.
    pub split: Split,
    /// Labels to keep; all when `None`.
    pub classes: Option<Vec<u32>>,
    /// Skip this many images (after the class filter) before `subset` counts.
    pub offset: Option<usize>,
    /// Keep at most this many images.
    pub subset: Option<usize>,
}

impl DataSpec {
    /// The bundled default training set.
    pub fn bundled(split: Split) -> Self {
        Self {
            format: DataFormat::Bundled,
            path: PathBuf::new(),
            split,
            classes: None,
            offset: None,
            subset: None,
        }
    }
}

impl FromStr for DataSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::Spec {
            spec: s.to_owned(),
            reason,
        };
        let (head, query) = s.split_once('?').unwrap_or((s, ""));
        let (format, path) = head.split_once(':').unwrap_or((head, ""));
        let cifar2 = format == "cifar2";
        let format = match format {
            "mnist" | "idx" => DataFormat::Idx { fashion: false },
            "cifar2" => DataFormat::Cifar10,
            "fashion-mnist" => DataFormat::Idx { fashion: true },
            "cifar10" => DataFormat::Cifar10,
            "folder" => DataFormat::Folder,
            "bundled" => DataFormat::Bundled,
            other => {
                return Err(bad(format!(
                    "unknown format {other:?}; expected mnist, fashion-mnist, cifar10, cifar2, folder or bundled"
                )));
            }
        };
        if format == DataFormat::Bundled && !path.is_empty() {
            return Err(bad(format!(
                "bundled names the data shipped with retrace and takes no path (found {path:?}); \
                 for files of your own use mnist:, fashion-mnist:, cifar10: or folder:"
            )));
        }
        if format != DataFormat::Bundled && path.is_empty() {
            return Err(bad(format!(
                "{} needs a path, as in {}:DIR",
                format.keyword(),
                format.keyword()
            )));
        }
        let mut spec = DataSpec {
            format,
            path: PathBuf::from(path),
            split: Split::Train,
            classes: cifar2.then(|| vec![1, 7]),
            offset: None,
            subset: cifar2.then_some(5000),
        };
        for option in query.split('&').filter(|o| !o.is_empty()) {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| bad(format!("option {option:?} is not key=value")))?;
            match key {
                "split" => {
                    spec.split = match value {
                        "train" => Split::Train,
                        "test" => Split::Test,
                        _ => return Err(bad(format!("split must be train or test, not {value:?}"))),
                    }
                }
                "classes" => {
                    let classes = value
                        .split(',')
                        .map(|c| c.trim().parse::<u32>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| bad(format!("classes must be comma-separated label numbers, not {value:?}")))?;
                    spec.classes = Some(classes);
                }
                "subset" => {
                    let n = value.parse::<usize>().ok().filter(|&n| n > 0);
                    spec.subset =
                        Some(n.ok_or_else(|| bad(format!("subset must be a positive number, not {value:?}")))?);
                }
                "offset" => {
                    let n = value
                        .parse::<usize>()
                        .map_err(|_| bad(format!("offset must be a number of images, not {value:?}")))?;
                    spec.offset = (n > 0).then_some(n);
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option {key:?}; expected split, classes, offset or subset"
                    )));
                }
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format.keyword())?;
        if self.format != DataFormat::Bundled {
            write!(f, ":{}", self.path.display())?;
        }
        let mut options = Vec::new();
        if self.split == Split::Test {
            options.push("split=test".to_owned());
        }
        if let Some(classes) = &self.classes {
            let list: Vec<String> = classes.iter().map(u32::to_string).collect();
            options.push(format!("classes={}", list.join(",")));
        }
        if let Some(n) = self.offset {
            options.push(format!("offset={n}"));
        }
        if let Some(n) = self.subset {
            options.push(format!("subset={n}"));
        }
        if !options.is_empty() {
            write!(f, "?{}", options.join("&"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_its_string() {
        for s in [
            "bundled",
            "bundled?split=test",
            "fashion-mnist:/usr/share/datasets/fashion-mnist?split=test&classes=0,9&subset=500",
            "fashion-mnist:/usr/share/datasets/fashion-mnist?offset=1000&subset=1000",
            "cifar10:/data/cifar?classes=3,5",
            "folder:/tmp/images",
        ] {
            let spec: DataSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
    }

    #[test]
    fn cifar2_is_automobiles_and_horses_5000() {
        let spec: DataSpec = "cifar2:/data/cifar".parse().unwrap();
        assert_eq!(spec.to_string(), "cifar10:/data/cifar?classes=1,7&subset=5000");
        let test: DataSpec = "cifar2:/data/cifar?split=test&subset=200".parse().unwrap();
        assert_eq!(
            test.to_string(),
            "cifar10:/data/cifar?split=test&classes=1,7&subset=200"
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, needle) in [
            ("jpeg:/x", "unknown format"),
            ("mnist", "needs a path"),
            ("mnist:/x?split=val", "split must be"),
            ("mnist:/x?classes=a", "classes must be"),
            ("mnist:/x?subset=0", "subset must be"),
            ("mnist:/x?offset=-1", "offset must be"),
            ("mnist:/x?colour=1", "unknown option"),
        ] {
            let err = s.parse::<DataSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
    }
}
