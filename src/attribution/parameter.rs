//! Method parameters: what a parameter is ([`Parameter`], its [`Range`]) and the values one
//! request gives every parameter ([`ParameterValues`]), which is what a method reads. Choosing
//! and checking values happens above, in the registry's [`super::registry::Parameters`].

use super::error::AttributionError;

use std::collections::BTreeMap;

/// The values a parameter takes.
#[derive(Clone, Copy, Debug)]
pub enum Range {
    /// A real number in [min, max]; `log` when it spans decades (edit it in ratios).
    Number {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
        /// Whether the scale is logarithmic.
        log: bool,
    },
    /// A whole number in [min, max].
    Integer {
        /// Smallest value.
        min: u64,
        /// Largest value.
        max: u64,
    },
    /// One of the names a `clap::ValueEnum` knows.
    Choice(fn() -> Vec<String>),
}

/// The names of a `clap::ValueEnum`'s values (for [`Range::Choice`]).
pub fn choices<T: clap::ValueEnum>() -> Vec<String> {
    T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_owned())
        .collect()
}

/// A method parameter. Parameters live in one namespace: methods that declare the same key
/// (K-FAC and EK-FAC share theirs) read the same value.
#[derive(Clone, Copy, Debug)]
pub struct Parameter {
    /// Key on the command line (`--set key=value`) and in files.
    pub key: &'static str,
    /// What it does, in one sentence.
    pub doc: &'static str,
    /// Its default, as text.
    pub default: &'static str,
    /// The values it takes.
    pub range: Range,
}

impl Parameter {
    /// Checks `value` against the range, returning it in canonical form.
    pub fn check(&self, value: &str) -> Result<String, AttributionError> {
        let value = value.trim();
        match self.range {
            Range::Number { min, max, .. } => {
                let v: f64 = value
                    .parse()
                    .map_err(|_| AttributionError::Request(format!("{} takes a number, not {value:?}", self.key)))?;
                if !(v.is_finite() && (min..=max).contains(&v)) {
                    return Err(AttributionError::Request(format!(
                        "{} must lie in [{min}, {max}], not {value}",
                        self.key
                    )));
                }
                Ok(v.to_string())
            }
            Range::Integer { min, max } => {
                let v: u64 = value.parse().map_err(|_| {
                    AttributionError::Request(format!("{} takes a whole number, not {value:?}", self.key))
                })?;
                if !(min..=max).contains(&v) {
                    return Err(AttributionError::Request(format!(
                        "{} must lie in [{min}, {max}], not {value}",
                        self.key
                    )));
                }
                Ok(v.to_string())
            }
            Range::Choice(names) => {
                let names = names();
                if names.iter().any(|n| n == value) {
                    Ok(value.to_owned())
                } else {
                    Err(AttributionError::Request(format!(
                        "{} takes one of {}, not {value:?}",
                        self.key,
                        names.join(", ")
                    )))
                }
            }
        }
    }

    /// The range in words: "[0.001, 100] (log)", "one of loss, elbo, square-norm".
    pub fn describe_range(&self) -> String {
        match self.range {
            Range::Number { min, max, log } => {
                format!("[{}, {}]{}", short(min), short(max), if log { " (log)" } else { "" })
            }
            Range::Integer { min, max } => format!("[{min}, {max}]"),
            Range::Choice(names) => format!("one of {}", names().join(", ")),
        }
    }
}

/// A number as people write it: 0.1, 64, 1e-12, 1e6.
fn short(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// Every parameter's value for one request (the user's, or the default): what methods read
/// through their [`super::context::Context`]. Made by [`super::registry::Parameters::values`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParameterValues(BTreeMap<String, String>);

impl ParameterValues {
    /// Values from `key → value` pairs (each checked already).
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self(values)
    }

    /// The value of `key`, as text.
    pub fn text(&self, key: &str) -> Result<String, AttributionError> {
        self.0
            .get(key)
            .cloned()
            .ok_or_else(|| AttributionError::Request(format!("no method has a parameter {key:?}")))
    }

    /// The value of the number parameter `key`.
    pub fn number(&self, key: &str) -> Result<f64, AttributionError> {
        let text = self.text(key)?;
        text.parse()
            .map_err(|_| AttributionError::Request(format!("{key} = {text:?} is not a number")))
    }

    /// The value of the whole-number parameter `key`.
    pub fn integer(&self, key: &str) -> Result<usize, AttributionError> {
        let text = self.text(key)?;
        text.parse()
            .map_err(|_| AttributionError::Request(format!("{key} = {text:?} is not a whole number")))
    }

    /// The value of the choice parameter `key`, as its enum.
    pub fn choice<T: clap::ValueEnum>(&self, key: &str) -> Result<T, AttributionError> {
        let text = self.text(key)?;
        T::from_str(&text, false).map_err(|e| AttributionError::Request(format!("{key}: {e}")))
    }

    /// The values of `parameters` as a JSON object, to record with scores.
    pub fn to_json(&self, parameters: &[Parameter]) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = parameters
            .iter()
            .map(|p| {
                (
                    p.key.to_owned(),
                    serde_json::Value::String(self.text(p.key).unwrap_or_default()),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }
}
