//! The method registry: every attribution method implements [`Method`] in a file of its own
//! and is listed once in [`all`]. The command line (`--method`, `retrace methods`), the
//! viewer's methods panel and the reports read the methods, their parameters (with defaults
//! and ranges) and what they need from the engine from here, so a new method is one new file
//! plus one line in [`all`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::context::Context;
use super::{Scores, ensemble, journey, kfac, mucs, pixel, retrac, tracin, trak};

/// What a method needs from the engine, beyond the query and the training data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The index of projected training gradients.
    pub index: bool,
    /// A fitted curvature (K-FAC factors) at the last checkpoint.
    pub curvature: bool,
    /// A copy of the model to change (unlearning).
    pub model_copy: bool,
    /// A generated query's sampling trajectory.
    pub trajectory: bool,
}

impl Needs {
    /// Short words for the needs, for listings: "index, curvature".
    pub fn describe(self) -> String {
        let mut parts = Vec::new();
        if self.index {
            parts.push("index");
        }
        if self.curvature {
            parts.push("curvature");
        }
        if self.model_copy {
            parts.push("model copy");
        }
        if self.trajectory {
            parts.push("a generated query's trajectory");
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }

    /// The needs of either.
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            index: self.index || other.index,
            curvature: self.curvature || other.curvature,
            model_copy: self.model_copy || other.model_copy,
            trajectory: self.trajectory || other.trajectory,
        }
    }
}

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
    pub fn check(&self, value: &str) -> Result<String, String> {
        let value = value.trim();
        match self.range {
            Range::Number { min, max, .. } => {
                let v: f64 = value
                    .parse()
                    .map_err(|_| format!("{} takes a number, not {value:?}", self.key))?;
                if !(v.is_finite() && (min..=max).contains(&v)) {
                    return Err(format!("{} must lie in [{min}, {max}], not {value}", self.key));
                }
                Ok(v.to_string())
            }
            Range::Integer { min, max } => {
                let v: u64 = value
                    .parse()
                    .map_err(|_| format!("{} takes a whole number, not {value:?}", self.key))?;
                if !(min..=max).contains(&v) {
                    return Err(format!("{} must lie in [{min}, {max}], not {value}", self.key));
                }
                Ok(v.to_string())
            }
            Range::Choice(names) => {
                let names = names();
                if names.iter().any(|n| n == value) {
                    Ok(value.to_owned())
                } else {
                    Err(format!("{} takes one of {}, not {value:?}", self.key, names.join(", ")))
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

/// A scoring method.
pub trait Method: Send + Sync {
    /// Its name on the command line, in files and in the viewer (`ensemble:retrac+kfac`).
    fn name(&self) -> String;
    /// What it computes, in one line, with its reference.
    fn summary(&self) -> &'static str;
    /// The parameters it reads.
    fn parameters(&self) -> Vec<Parameter> {
        Vec::new()
    }
    /// What it needs from the engine.
    fn needs(&self) -> Needs;
    /// Whether it can attribute `query` (Journey-TRAK needs a generated one), and why not.
    fn applies_to(&self, query: &super::Query) -> Result<(), String> {
        let _ = query;
        Ok(())
    }
    /// Scores every training image for the context's query. `Ok(None)` when cancelled.
    fn score(&self, context: &mut Context<'_>) -> Result<Option<Scores>, String>;
}

/// Every method, in the order the command line and the viewer list them; one line per method.
pub fn all() -> Vec<Box<dyn Method>> {
    vec![
        Box::new(retrac::ReTrac),
        Box::new(retrac::ReTracBucket),
        Box::new(tracin::TracIn),
        Box::new(kfac::KfacInfluence::KFAC),
        Box::new(kfac::KfacInfluence::EKFAC),
        Box::new(trak::Trak::TRAK),
        Box::new(trak::Trak::DTRAK),
        Box::new(journey::Journey),
        Box::new(mucs::Mucs),
        Box::new(pixel::Pixel),
    ]
}

/// The names of every method in [`all`].
pub fn names() -> Vec<String> {
    all().iter().map(|m| m.name()).collect()
}

/// The method called `name`: one of [`all`], or an ensemble of them
/// (`ensemble:retrac+kfac`, `ensemble-z:retrac+kfac`).
pub fn lookup(name: &str) -> Result<Box<dyn Method>, String> {
    let name = name.trim();
    if let Some(ensemble) = ensemble::Ensemble::parse(name)? {
        return Ok(Box::new(ensemble));
    }
    all().into_iter().find(|m| m.name() == name).ok_or_else(|| {
        format!(
            "unknown method {name:?}; expected one of {}, or ensemble:A+B",
            names().join(", ")
        )
    })
}

/// The parameter called `key`, from whichever method declares it.
pub fn parameter(key: &str) -> Option<Parameter> {
    every_parameter().iter().find(|p| p.key == key).copied()
}

/// Every method's parameters, each key once, gathered on first use (the viewer asks every
/// frame).
fn every_parameter() -> &'static [Parameter] {
    static ALL: std::sync::OnceLock<Vec<Parameter>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut out: Vec<Parameter> = Vec::new();
        for p in all().iter().flat_map(|m| m.parameters()) {
            if !out.iter().any(|q| q.key == p.key) {
                out.push(p);
            }
        }
        out
    })
}

/// Parameter values set by the user; a parameter not set takes its default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Parameters(BTreeMap<String, String>);

impl Parameters {
    /// Sets `key` to `value`, checked against the parameter's range.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let p = parameter(key).ok_or_else(|| {
            let mut keys: Vec<&str> = every_parameter().iter().map(|p| p.key).collect();
            keys.sort_unstable();
            format!(
                "no method has a parameter {key:?}; the parameters are {}",
                keys.join(", ")
            )
        })?;
        let value = p.check(value)?;
        if value == p.check(p.default).unwrap_or_default() {
            self.0.remove(key);
        } else {
            self.0.insert(key.to_owned(), value);
        }
        Ok(())
    }

    /// Sets the choice parameter `key` to `value`.
    pub fn set_choice<T: clap::ValueEnum>(&mut self, key: &str, value: T) -> Result<(), String> {
        let name = value
            .to_possible_value()
            .ok_or_else(|| format!("{key}: a value without a name"))?;
        self.set(key, name.get_name())
    }

    /// Parses and sets a `key=value` pair.
    pub fn set_pair(&mut self, pair: &str) -> Result<(), String> {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
        self.set(key.trim(), value)
    }

    /// The value of `key` (its default when not set), as text.
    pub fn text(&self, key: &str) -> Result<String, String> {
        match self.0.get(key) {
            Some(v) => Ok(v.clone()),
            None => parameter(key)
                .map(|p| p.default.to_owned())
                .ok_or_else(|| format!("no method has a parameter {key:?}")),
        }
    }

    /// The value of the number parameter `key`.
    pub fn number(&self, key: &str) -> Result<f64, String> {
        let text = self.text(key)?;
        text.parse().map_err(|_| format!("{key} = {text:?} is not a number"))
    }

    /// The value of the whole-number parameter `key`.
    pub fn integer(&self, key: &str) -> Result<usize, String> {
        let text = self.text(key)?;
        text.parse()
            .map_err(|_| format!("{key} = {text:?} is not a whole number"))
    }

    /// The value of the choice parameter `key`, as its enum.
    pub fn choice<T: clap::ValueEnum>(&self, key: &str) -> Result<T, String> {
        let text = self.text(key)?;
        T::from_str(&text, false).map_err(|e| format!("{key}: {e}"))
    }

    /// The values of `parameters` (defaults included), as `key=value` text: what a method's
    /// cached scores are keyed by.
    pub fn describe(&self, parameters: &[Parameter]) -> String {
        parameters
            .iter()
            .map(|p| format!("{}={}", p.key, self.text(p.key).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The `key=value` pairs of `parameters` that differ from their defaults, in key order.
    pub fn changed(&self, parameters: &[Parameter]) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| parameters.iter().any(|p| p.key == k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_found_by_its_name_and_every_default_is_in_range() {
        for m in all() {
            assert_eq!(lookup(&m.name()).unwrap().name(), m.name());
            for p in m.parameters() {
                p.check(p.default).unwrap_or_else(|e| panic!("{}: {e}", m.name()));
                assert!(!p.doc.is_empty());
            }
        }
    }

    #[test]
    fn parameters_are_checked_and_defaults_stay_implicit() {
        let mut p = Parameters::default();
        p.set("measurement", "square-norm").unwrap();
        assert_eq!(
            p.choice::<crate::diffusion::Measurement>("measurement").unwrap(),
            crate::diffusion::Measurement::SquareNorm
        );
        assert!(p.set("measurement", "nope").unwrap_err().contains("loss"));
        assert!(p.set("no-such-key", "1").is_err());
        assert!(p.set_pair("damping=-1").is_err());
        p.set_pair("damping=0.1").unwrap();
        assert_eq!(p, {
            let mut q = Parameters::default();
            q.set("measurement", "square-norm").unwrap();
            q
        });
        assert!(lookup("nope").err().unwrap().contains("retrac"));
    }
}
