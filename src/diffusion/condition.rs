//! Conditioning: what one image is generated, trained or attributed under (a class label here;
//! a prompt embedding is the same idea with a vector), and how a model turns a batch of them
//! into the rows its class embedding reads.
//!
//! A condition travels with every training image (its label), every query (the class it was
//! generated for, or the one the user gave a loaded image) and so with every (t, ε) draw made
//! for it: per-example gradients, curvature fits and every method evaluate the model under the
//! example's own condition, as the conditional training loss does.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// What one image is conditioned on. A model reads it through its [`ConditionEncoding`]; an
/// unconditional model ignores it, so a training image's condition is always its label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// No condition: the only one an unconditional model takes; a class-conditional model
    /// reads it as its null class (the label classifier-free guidance and label dropout use).
    #[default]
    Unconditional,
    /// A class label.
    Class(u32),
}

impl Condition {
    /// A short human-readable form: the class's name when `class_names` has it.
    pub fn describe(&self, class_names: &[String]) -> String {
        match self {
            Self::Unconditional => "unconditional".into(),
            Self::Class(c) => match class_names.get(*c as usize) {
                Some(name) => format!("class {c} ({name})"),
                None => format!("class {c}"),
            },
        }
    }
}

/// How a model encodes conditions as the rows its class embedding takes (from its
/// [`super::UNetConfig`]): nothing, one-hot rows over a table of class embeddings (diffusers'
/// `num_class_embeds`, an `nn.Embedding`, here a bias-free Linear so that gradient capture and
/// K-FAC see it like every other layer), or the label as a number that goes through sinusoidal
/// features and an MLP (diffusers' `class_embed_type: "timestep"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConditionEncoding {
    /// An unconditional model: conditions are not read.
    #[default]
    Unconditional,
    /// One-hot rows over `classes` labels.
    OneHot {
        /// Rows of the embedding table.
        classes: usize,
        /// The label that stands for "no class", if the model was trained with one.
        null_class: Option<u32>,
    },
    /// The label as a number, one column.
    Label {
        /// The label that stands for "no class", if the model was trained with one.
        null_class: Option<u32>,
    },
}

impl ConditionEncoding {
    /// Whether the model reads conditions.
    pub fn is_conditional(&self) -> bool {
        !matches!(self, Self::Unconditional)
    }

    /// The null class, for a conditional model trained with one.
    pub fn null_class(&self) -> Option<u32> {
        match self {
            Self::Unconditional => None,
            Self::OneHot { null_class, .. } | Self::Label { null_class } => *null_class,
        }
    }

    /// Checks that `condition` can be encoded: a class within the table, or no class for a model
    /// with a null class (or an unconditional one, which ignores any condition).
    pub fn check(&self, condition: &Condition) -> Result<(), ConfigError> {
        self.label(condition).map(|_| ())
    }

    /// The label a conditional model reads for `condition` (`None` for an unconditional model).
    fn label(&self, condition: &Condition) -> Result<Option<u32>, ConfigError> {
        match (self, condition) {
            (Self::Unconditional, _) => Ok(None),
            (Self::OneHot { classes, .. }, Condition::Class(c)) if *c as usize >= *classes => {
                Err(ConfigError(format!(
                    "class {c}: the model's class embedding has {classes} rows (classes 0 to {})",
                    classes - 1
                )))
            }
            (_, Condition::Class(c)) => Ok(Some(*c)),
            (_, Condition::Unconditional) => self.null_class().map(Some).ok_or_else(|| {
                ConfigError(
                    "the model is class-conditional and has no null class: give a class (--class), \
                     and guidance scale 1"
                        .into(),
                )
            }),
        }
    }

    /// The rows ([batch, width]) a model with this encoding reads for `conditions`, on `device`;
    /// `None` for an unconditional model.
    pub fn rows(&self, conditions: &[Condition], device: &Device) -> Result<Option<Tensor<2>>, ConfigError> {
        let labels = conditions
            .iter()
            .map(|c| self.label(c))
            .collect::<Result<Vec<_>, _>>()?;
        let n = conditions.len();
        let rows = match self {
            Self::Unconditional => return Ok(None),
            Self::OneHot { classes, .. } => {
                let mut values = vec![0.0f32; n * classes];
                for (i, label) in labels.iter().enumerate() {
                    values[i * classes + label.unwrap_or(0) as usize] = 1.0;
                }
                TensorData::new(values, [n, *classes])
            }
            Self::Label { .. } => {
                let values = labels.iter().map(|l| l.unwrap_or(0) as f32).collect::<Vec<_>>();
                TensorData::new(values, [n, 1])
            }
        };
        Ok(Some(Tensor::from_data(rows, device)))
    }

    /// The rows of `n` images of class 0: a condition every conditional model reads (a table
    /// has at least one row), for passes whose condition does not matter (shapes, FLOPs,
    /// timing); `None` for an unconditional model.
    pub fn class_zero_rows(&self, n: usize, device: &Device) -> Option<Tensor<2>> {
        self.rows(&vec![Condition::Class(0); n], device).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_rows_put_each_class_and_the_null_class_in_its_column() {
        let device = Device::flex();
        let encoding = ConditionEncoding::OneHot {
            classes: 3,
            null_class: Some(2),
        };
        let rows = encoding
            .rows(&[Condition::Class(1), Condition::Unconditional], &device)
            .unwrap()
            .unwrap();
        assert_eq!(
            rows.into_data().try_to_vec::<f32>().unwrap(),
            vec![0., 1., 0., 0., 0., 1.]
        );
        assert!(encoding.rows(&[Condition::Class(3)], &device).is_err());
        let without_null = ConditionEncoding::OneHot {
            classes: 3,
            null_class: None,
        };
        let err = without_null.check(&Condition::Unconditional).unwrap_err().to_string();
        assert!(err.contains("no null class"), "{err}");
        assert!(
            ConditionEncoding::Unconditional
                .rows(&[Condition::Class(7)], &device)
                .unwrap()
                .is_none()
        );
        let label = ConditionEncoding::Label { null_class: Some(10) };
        let rows = label
            .rows(&[Condition::Class(4), Condition::Unconditional], &device)
            .unwrap()
            .unwrap();
        assert_eq!(rows.into_data().try_to_vec::<f32>().unwrap(), vec![4., 10.]);
    }
}
