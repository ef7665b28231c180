//! Ensembles of methods: `ensemble:A+B+…` averages the members' ranks (each member's total
//! scores turned into ranks scaled to [0, 1], ties averaged), and `ensemble-z:A+B+…` averages
//! their z-scores ((total − mean) / standard deviation over the training set). Both make
//! members of different scales comparable; rank averaging also ignores how far apart scores
//! are. The result has one bucket spanning every step. Whether an ensemble helps is the LDS
//! table's call.

use std::sync::Arc;

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::method::{Method, Needs, scores_of};
use crate::attribution::parameter::Parameter;
use crate::attribution::query::Query;
use crate::attribution::scores::Scores;
use crate::stats::ranks;

/// How the members' scores are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// Mean of ranks scaled to [0, 1].
    Rank,
    /// Mean of z-scores.
    ZScore,
}

impl Combine {
    fn prefix(self) -> &'static str {
        match self {
            Combine::Rank => "ensemble:",
            Combine::ZScore => "ensemble-z:",
        }
    }

    /// Splits `ensemble:A+B` or `ensemble-z:A+B` into the combination and the members' names;
    /// `Ok(None)` for a name that is not an ensemble.
    pub fn parse(name: &str) -> Result<Option<(Self, Vec<String>)>, AttributionError> {
        let Some((combine, rest)) = [Combine::Rank, Combine::ZScore]
            .into_iter()
            .find_map(|c| name.strip_prefix(c.prefix()).map(|rest| (c, rest)))
        else {
            return Ok(None);
        };
        let members: Vec<String> = rest.split('+').map(|m| m.trim().to_owned()).collect();
        if members.len() < 2 {
            return Err(AttributionError::Request(format!(
                "{name}: an ensemble needs at least two methods, as in ensemble:retrac+kfac"
            )));
        }
        if members.iter().any(|m| m.starts_with("ensemble")) {
            return Err(AttributionError::Request(format!(
                "{name}: an ensemble cannot hold another ensemble"
            )));
        }
        Ok(Some((combine, members)))
    }
}

/// An ensemble of methods, built with its members (the registry resolves their names).
pub struct Ensemble {
    /// How members combine.
    pub combine: Combine,
    /// The members (at least two, none an ensemble).
    pub members: Vec<Arc<dyn Method>>,
}

impl Ensemble {
    /// The ensemble of `members` combined by `combine`.
    pub fn new(combine: Combine, members: Vec<Arc<dyn Method>>) -> Result<Self, AttributionError> {
        if members.len() < 2 {
            return Err(AttributionError::Request(
                "an ensemble needs at least two methods, as in ensemble:retrac+kfac".into(),
            ));
        }
        Ok(Self { combine, members })
    }

    fn member_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name()).collect()
    }
}

/// Each training image's standardised value under `combine`.
fn standardise(totals: &[f64], combine: Combine) -> Vec<f64> {
    let n = totals.len().max(1) as f64;
    match combine {
        Combine::Rank => {
            // `ranks` gives 0 to the smallest; scale to [0, 1] so 1 is the strongest proponent.
            let scale = (n - 1.0).max(1.0);
            ranks(totals).iter().map(|r| r / scale).collect()
        }
        Combine::ZScore => {
            let mean = totals.iter().sum::<f64>() / n;
            let sd = (totals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let sd = if sd > 0.0 { sd } else { 1.0 };
            totals.iter().map(|v| (v - mean) / sd).collect()
        }
    }
}

impl Method for Ensemble {
    fn name(&self) -> String {
        format!("{}{}", self.combine.prefix(), self.member_names().join("+"))
    }

    fn summary(&self) -> &'static str {
        "ensemble: the mean of its members' ranks (ensemble:) or z-scores (ensemble-z:)"
    }

    fn parameters(&self) -> Vec<Parameter> {
        let mut out: Vec<Parameter> = Vec::new();
        for p in self.members.iter().flat_map(|m| m.parameters()) {
            if !out.iter().any(|q| q.key == p.key) {
                out.push(p);
            }
        }
        out
    }

    fn needs(&self) -> Needs {
        self.members
            .iter()
            .fold(Needs::default(), |needs, m| needs.union(m.needs()))
    }

    fn applies_to(&self, query: &Query) -> Result<(), AttributionError> {
        self.members.iter().try_for_each(|m| m.applies_to(query))
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let mut combined: Vec<f64> = Vec::new();
        let mut first: Option<Scores> = None;
        for member in &self.members {
            let scores = scores_of(member.as_ref(), context)?;
            let values = standardise(&scores.totals(), self.combine);
            if combined.is_empty() {
                combined = vec![0.0; values.len()];
            }
            for (c, v) in combined.iter_mut().zip(values) {
                *c += v / self.members.len() as f64;
            }
            first.get_or_insert(scores);
        }
        let first = first.ok_or_else(|| AttributionError::Invalid("an ensemble needs members".into()))?;
        Ok(Scores {
            method: self.name(),
            parameters: serde_json::json!({
                "members": self.member_names(),
                "combine": format!("{:?}", self.combine),
            }),
            buckets: vec![[0, context.model.info.schedule.steps]],
            ids: first.ids,
            labels: first.labels,
            per_bucket: combined.iter().map(|&v| v as f32).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_the_combination_and_members() {
        let (combine, members) = Combine::parse("ensemble:retrac+kfac").unwrap().unwrap();
        assert_eq!(
            (combine, members),
            (Combine::Rank, vec!["retrac".to_owned(), "kfac".to_owned()])
        );
        assert_eq!(
            Combine::parse("ensemble-z:pixel+ekfac").unwrap().unwrap().0,
            Combine::ZScore
        );
        assert!(Combine::parse("retrac").unwrap().is_none());
        assert!(Combine::parse("ensemble:retrac").is_err());
        assert!(Combine::parse("ensemble:retrac+ensemble:kfac+pixel").is_err());
    }

    #[test]
    fn standardised_values_keep_the_order_and_the_scale_is_shared() {
        let totals = [3.0, -1.0, 10.0, 0.5];
        let r = standardise(&totals, Combine::Rank);
        assert_eq!(r, vec![2.0 / 3.0, 0.0, 1.0, 1.0 / 3.0]);
        let z = standardise(&totals, Combine::ZScore);
        let mean: f64 = z.iter().sum::<f64>() / 4.0;
        let var: f64 = z.iter().map(|v| v * v).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
        assert!(z[2] > z[0] && z[0] > z[3] && z[3] > z[1]);
    }
}
