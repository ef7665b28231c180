//! The rows of the evaluation table: a method (or the random scorer) with its parameters and
//! whether the query shares the training images' draws; their names (`kfac-elbo+shared`,
//! `mucs[mucs-batch=16]`) parsed and printed, and the files a row keeps its partial results in.

use std::path::{Path, PathBuf};

use super::benchmark::QueryKind;
use super::error::EvalError;
use crate::attribution::registry::{self, Parameters};
use crate::attribution::{Method, Parameter};
use crate::diffusion::Measurement;

/// What a row of the table scores with.
#[derive(Clone, Debug, PartialEq)]
pub enum RowMethod {
    /// A method of the registry, by name.
    Attribution(String),
    /// Independent random scores: the chance level.
    Random,
    /// 1 for the training images of the query's class, 0 for the others: the floor a method
    /// must clear on a benchmark with several classes (recognising the query's class is not
    /// attributing it). The query's class is its own in a class-conditional benchmark, else the
    /// bundled classifier's prediction.
    ClassIndicator,
}

/// The row name of [`RowMethod::ClassIndicator`].
pub const CLASS_INDICATOR: &str = "class";

/// One row of the table: a method with its settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    /// What scores.
    pub method: RowMethod,
    /// The methods' parameters (the measurement among them).
    pub parameters: Parameters,
    /// Whether the query shares the training images' (t, ε) draws.
    pub shared_noise: bool,
    /// Score only the queries of this kind (`@generated`, `@held-out`): what makes a method that
    /// costs minutes per query (MUCS on a CPU) affordable on the kind that matters.
    pub only: Option<QueryKind>,
}

/// The row-name suffix of [`EvalRow::only`].
fn only_suffix(kind: QueryKind) -> &'static str {
    match kind {
        QueryKind::HeldOut => "@held-out",
        QueryKind::Generated => "@generated",
    }
}

/// Row-name suffixes of the measurements other than the loss.
const MEASUREMENT_SUFFIXES: [(&str, Measurement); 2] =
    [("-elbo", Measurement::ElboLoss), ("-sqnorm", Measurement::SquareNorm)];

/// Whether the method reads the `measurement` parameter.
fn takes_measurement(method: &dyn Method) -> bool {
    method.parameters().iter().any(|p| p.key == "measurement")
}

impl EvalRow {
    /// The row's name: `kfac`, `kfac-elbo`, `retrac`, … with the method's other parameters
    /// that differ from their defaults in brackets (`mucs[mucs-batch=16;mucs-max-steps=100]`)
    /// and `+shared` when the query shares the training images' draws (for methods that use the
    /// index), then `@generated` or `@held-out` for a row restricted to one kind of query.
    pub fn label(&self) -> String {
        let only = self.only.map_or("", only_suffix);
        format!("{}{only}", self.scorer_label())
    }

    /// [`Self::label`] without the kind restriction: what names the scores (the score cache),
    /// which do not depend on which queries a row takes.
    pub fn scorer_label(&self) -> String {
        let name = match &self.method {
            RowMethod::Random => return "random".into(),
            RowMethod::ClassIndicator => return CLASS_INDICATOR.into(),
            RowMethod::Attribution(m) => m,
        };
        let Ok(method) = registry::lookup(name) else {
            return name.clone();
        };
        let measurement = self
            .parameters
            .values()
            .choice::<Measurement>("measurement")
            .unwrap_or(Measurement::Loss);
        let suffix = MEASUREMENT_SUFFIXES
            .iter()
            .find(|(_, m)| *m == measurement && takes_measurement(method.as_ref()))
            .map_or("", |(s, _)| s);
        let draws = if self.shared_noise && method.needs().index {
            "+shared"
        } else {
            ""
        };
        // Other parameters away from their defaults, so rows of one method stay apart.
        let others: Vec<Parameter> = method
            .parameters()
            .into_iter()
            .filter(|p| p.key != "measurement")
            .collect();
        let changed = self.parameters.changed(&others);
        let settings = if changed.is_empty() {
            String::new()
        } else {
            format!("[{}]", changed.join(";"))
        };
        format!("{name}{suffix}{settings}{draws}")
    }

    /// Whether the row scores queries of `kind`: a method that attributes sampling trajectories
    /// (Journey-TRAK) takes generated queries only.
    pub fn takes(&self, kind: QueryKind) -> bool {
        if self.only.is_some_and(|only| only != kind) {
            return false;
        }
        match &self.method {
            RowMethod::Attribution(m) => {
                kind == QueryKind::Generated || registry::lookup(m).is_ok_and(|m| !m.needs().trajectory)
            }
            RowMethod::Random | RowMethod::ClassIndicator => true,
        }
    }

    /// Parses a row name as [`Self::label`] writes it, on top of `parameters`.
    pub fn parse(name: &str, parameters: &Parameters) -> Result<Self, EvalError> {
        let name = name.trim();
        let (name, only) = QueryKind::ALL
            .iter()
            .find_map(|&kind| name.strip_suffix(only_suffix(kind)).map(|rest| (rest, Some(kind))))
            .unwrap_or((name, None));
        let (name, shared_noise) = match name.strip_suffix("+shared") {
            Some(rest) => (rest, true),
            None => (name, false),
        };
        let mut parameters = parameters.clone();
        let name = match name.strip_suffix(']').and_then(|rest| rest.split_once('[')) {
            Some((base, pairs)) => {
                for pair in pairs.split(';') {
                    parameters.set_pair(pair)?;
                }
                base
            }
            None => name,
        };
        let baseline = match name {
            "random" => Some(RowMethod::Random),
            CLASS_INDICATOR => Some(RowMethod::ClassIndicator),
            _ => None,
        };
        if let Some(method) = baseline {
            return Ok(Self {
                method,
                parameters,
                shared_noise,
                only,
            });
        }
        let (base, measurement) = match registry::lookup(name) {
            Ok(_) => (name, None),
            Err(unknown) => MEASUREMENT_SUFFIXES
                .iter()
                .find_map(|(suffix, m)| name.strip_suffix(suffix).map(|base| (base, Some(*m))))
                .ok_or(unknown)?,
        };
        let method = registry::lookup(base)?;
        if let Some(m) = measurement {
            if !takes_measurement(method.as_ref()) {
                return Err(EvalError::Invalid(format!(
                    "{name}: {base} takes no other measurement than the loss"
                )));
            }
            parameters.set_choice("measurement", m)?;
        }
        Ok(Self {
            method: RowMethod::Attribution(base.to_owned()),
            parameters,
            shared_noise,
            only,
        })
    }
}

/// Where [`evaluate_row`] keeps the per-query results of the row `label` under `parts`.
pub fn row_parts_dir(parts: &Path, label: &str) -> PathBuf {
    parts.join(file_safe(label))
}

/// A row label as a file name: `+`, brackets, `;` and `=` become `_`.
pub fn file_safe(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_names_round_trip() {
        let influence = Parameters::default();
        for name in [
            "tracin",
            "retrac+shared",
            "kfac-elbo",
            "ekfac-sqnorm+shared",
            "pixel",
            "random",
            "class",
            "kfac",
            "ensemble:retrac+kfac+shared",
            "mucs[mucs-batch=16;mucs-max-steps=100]",
            "trak[trak-damping=0.01]+shared",
            "mucs[mucs-draws=24]@generated",
            "dtrak+shared@held-out",
        ] {
            assert_eq!(EvalRow::parse(name, &influence).unwrap().label(), name);
        }
        assert!(EvalRow::parse("tracin-elbo", &influence).is_err());
        assert!(EvalRow::parse("nope", &influence).is_err());
        let generated = EvalRow::parse("pixel@generated", &influence).unwrap();
        assert!(generated.takes(QueryKind::Generated) && !generated.takes(QueryKind::HeldOut));
        assert_eq!(generated.scorer_label(), "pixel");
    }
}
