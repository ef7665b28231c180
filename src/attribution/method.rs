//! What a method is: the [`Method`] trait every attribution method implements in a file of its
//! own, what it [`Needs`] from the engine, and [`scores_of`], which runs a method on a request's
//! [`Context`] at most once.

use super::context::Context;
use super::error::AttributionError;
use super::parameter::Parameter;
use super::query::Query;
use super::scores::Scores;

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
    fn applies_to(&self, query: &Query) -> Result<(), AttributionError> {
        let _ = query;
        Ok(())
    }
    /// Scores every training image for the context's query.
    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError>;
}

/// The scores of `method` for the context's query, computed once per request: an ensemble
/// reuses its members' scores, and a member asked for on its own is not redone. Scores that are
/// not finite are refused.
pub fn scores_of(method: &dyn Method, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
    let name = method.name();
    if let Some(scores) = context.computed_scores(&name) {
        return Ok(scores);
    }
    let scores = method.score(context)?;
    scores.check_finite()?;
    context.keep_scores(&name, &scores);
    Ok(scores)
}
