//! Attribution methods. Each method is one file under `methods/` implementing [`Method`],
//! listed once in [`registry`]; it takes what it needs from a request's [`Context`] and returns
//! [`Scores`] S[train image, timestep bucket]; a score's total is its sum over buckets.
//!
//! Inside, imports run one way: `run` → `registry` → `methods/*` → `method` → `context` →
//! `products/*`, `inputs`, `parameter`, `query`, `scores` → `error`. The context imports no method, and no
//! method imports another method's file; what several methods share is a product.

pub mod context;
pub mod error;
pub mod inputs;
pub mod method;
pub mod methods;
pub mod parameter;
pub mod products;
pub mod query;
pub mod registry;
pub mod run;
pub mod scores;

pub use context::Context;
pub use error::AttributionError;
pub use inputs::{CheckpointFeatures, GradientInputs, TrainFeatures, bucket_dot_products};
pub use method::{Method, Needs, scores_of};
pub use methods::{ensemble, journey, kfac, mucs, pixel, retrac, tracin, trak};
pub use parameter::{Parameter, ParameterValues, Range};
pub use query::{Query, load_query_image};
pub use registry::{Parameters, Registry};
pub use run::{MethodSettings, attribute, attribute_in};
pub use scores::Scores;
