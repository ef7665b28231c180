//! The method registry: every attribution method implements [`Method`] in a file of its own
//! under `methods/` and is listed once in [`all`]. The command line (`--method`, `retrace
//! methods`), the viewer's methods panel and the reports read the methods, their parameters
//! (with defaults and ranges) and what they need from the engine from here, so a new method is
//! one new file plus one line in [`all`]; [`lookup_in`] resolves names against any list, so a
//! method defined elsewhere (a test's) is scored like the built-in ones. The registry also
//! holds [`Parameters`], the user's checked values of every method's parameters.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::AttributionError;
use super::method::Method;
use super::methods::ensemble::{Combine, Ensemble};
use super::methods::{das, feature_nn, journey, kfac, mucs, nda, pixel, retrac, tracin, trak};
use super::parameter::{Parameter, ParameterValues};

/// Every built-in method, in the order the command line and the viewer list them; one line
/// per method.
fn builtin_methods() -> Vec<Arc<dyn Method>> {
    vec![
        Arc::new(retrac::ReTrac),
        Arc::new(retrac::ReTracBucket),
        Arc::new(tracin::TracIn),
        Arc::new(kfac::KfacInfluence::KFAC),
        Arc::new(kfac::KfacInfluence::EKFAC),
        Arc::new(trak::Trak::TRAK),
        Arc::new(trak::Trak::DTRAK),
        Arc::new(das::Das),
        Arc::new(journey::Journey),
        Arc::new(mucs::Mucs),
        Arc::new(nda::Nda),
        Arc::new(pixel::Pixel),
        Arc::new(feature_nn::FeatureNeighbours),
    ]
}

/// A list of methods, and the one namespace of their parameters.
#[derive(Clone)]
pub struct Registry {
    methods: Vec<Arc<dyn Method>>,
    parameters: Vec<Parameter>,
}

impl Registry {
    /// A registry of `methods`, in listing order.
    pub fn new(methods: Vec<Arc<dyn Method>>) -> Self {
        let mut parameters: Vec<Parameter> = Vec::new();
        for p in methods.iter().flat_map(|m| m.parameters()) {
            if !parameters.iter().any(|q| q.key == p.key) {
                parameters.push(p);
            }
        }
        Self { methods, parameters }
    }

    /// The built-in methods, made once (the viewer asks every frame).
    pub fn builtin() -> &'static Registry {
        static BUILTIN: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(|| Registry::new(builtin_methods()))
    }

    /// This registry with `method` listed last.
    pub fn with(&self, method: Arc<dyn Method>) -> Self {
        let mut methods = self.methods.clone();
        methods.push(method);
        Self::new(methods)
    }

    /// The methods, in listing order.
    pub fn methods(&self) -> &[Arc<dyn Method>] {
        &self.methods
    }

    /// The names of the methods.
    pub fn names(&self) -> Vec<String> {
        self.methods.iter().map(|m| m.name()).collect()
    }

    /// The method called `name`: a listed one, or an ensemble of listed ones
    /// (`ensemble:retrac+kfac`, `ensemble-z:retrac+kfac`), built with its members resolved.
    pub fn lookup(&self, name: &str) -> Result<Arc<dyn Method>, AttributionError> {
        let name = name.trim();
        if let Some((combine, members)) = Combine::parse(name)? {
            let members = members
                .iter()
                .map(|m| {
                    self.listed(m)
                        .map_err(|e| AttributionError::Request(format!("{name}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Arc::new(Ensemble::new(combine, members)?));
        }
        self.listed(name)
    }

    /// The listed (non-ensemble) method called `name`.
    fn listed(&self, name: &str) -> Result<Arc<dyn Method>, AttributionError> {
        self.methods.iter().find(|m| m.name() == name).cloned().ok_or_else(|| {
            AttributionError::Request(format!(
                "unknown method {name:?}; expected one of {}, or ensemble:A+B",
                self.names().join(", ")
            ))
        })
    }

    /// The parameter called `key`, from whichever method declares it.
    pub fn parameter(&self, key: &str) -> Option<Parameter> {
        self.parameters.iter().find(|p| p.key == key).copied()
    }

    /// Every listed method's parameters, each key once.
    pub fn parameters(&self) -> &[Parameter] {
        &self.parameters
    }
}

/// Every built-in method, in listing order.
pub fn all() -> Vec<Arc<dyn Method>> {
    Registry::builtin().methods().to_vec()
}

/// The names of every built-in method.
pub fn names() -> Vec<String> {
    Registry::builtin().names()
}

/// The built-in method called `name`, or an ensemble of built-in methods.
pub fn lookup(name: &str) -> Result<Arc<dyn Method>, AttributionError> {
    Registry::builtin().lookup(name)
}

/// The built-in parameter called `key`.
pub fn parameter(key: &str) -> Option<Parameter> {
    Registry::builtin().parameter(key)
}

/// Parameter values set by the user; a parameter not set takes its default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Parameters(BTreeMap<String, String>);

impl Parameters {
    /// Sets `key` to `value`, checked against the range of the built-in parameter.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), AttributionError> {
        self.set_in(Registry::builtin(), key, value)
    }

    /// Sets `key` to `value`, checked against the range of `registry`'s parameter.
    pub fn set_in(&mut self, registry: &Registry, key: &str, value: &str) -> Result<(), AttributionError> {
        let p = registry.parameter(key).ok_or_else(|| {
            let mut keys: Vec<&str> = registry.parameters().iter().map(|p| p.key).collect();
            keys.sort_unstable();
            AttributionError::Request(format!(
                "no method has a parameter {key:?}; the parameters are {}",
                keys.join(", ")
            ))
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
    pub fn set_choice<T: clap::ValueEnum>(&mut self, key: &str, value: T) -> Result<(), AttributionError> {
        let name = value
            .to_possible_value()
            .ok_or_else(|| AttributionError::Request(format!("{key}: a value without a name")))?;
        self.set(key, name.get_name())
    }

    /// Parses and sets a `key=value` pair.
    pub fn set_pair(&mut self, pair: &str) -> Result<(), AttributionError> {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| AttributionError::Request(format!("{pair:?} is not KEY=VALUE")))?;
        self.set(key.trim(), value)
    }

    /// The value of `key` (its default when not set), as text.
    pub fn text(&self, key: &str) -> Result<String, AttributionError> {
        match self.0.get(key) {
            Some(v) => Ok(v.clone()),
            None => parameter(key)
                .map(|p| p.default.to_owned())
                .ok_or_else(|| AttributionError::Request(format!("no method has a parameter {key:?}"))),
        }
    }

    /// Every parameter of `registry` with its value (this one's, or the default): what the
    /// methods of a request read.
    pub fn values_in(&self, registry: &Registry) -> ParameterValues {
        ParameterValues::new(
            registry
                .parameters()
                .iter()
                .map(|p| {
                    let value = self.0.get(p.key).cloned().unwrap_or_else(|| p.default.to_owned());
                    (p.key.to_owned(), value)
                })
                .collect(),
        )
    }

    /// Every built-in parameter with its value.
    pub fn values(&self) -> ParameterValues {
        self.values_in(Registry::builtin())
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
            p.values()
                .choice::<crate::diffusion::Measurement>("measurement")
                .unwrap(),
            crate::diffusion::Measurement::SquareNorm
        );
        assert!(p.set("measurement", "nope").unwrap_err().to_string().contains("loss"));
        assert!(p.set("no-such-key", "1").is_err());
        assert!(p.set_pair("damping=-1").is_err());
        p.set_pair("damping=0.1").unwrap();
        assert_eq!(p, {
            let mut q = Parameters::default();
            q.set("measurement", "square-norm").unwrap();
            q
        });
        assert!(lookup("nope").err().unwrap().to_string().contains("retrac"));
    }

    #[test]
    fn ensembles_parse_with_their_members_resolved_and_round_trip() {
        let e = lookup("ensemble:retrac+kfac").unwrap();
        assert_eq!(e.name(), "ensemble:retrac+kfac");
        assert!(e.needs().curvature && e.needs().index);
        assert_eq!(
            lookup("ensemble-z:pixel+ekfac").unwrap().name(),
            "ensemble-z:pixel+ekfac"
        );
        assert!(lookup("ensemble:retrac").is_err());
        assert!(
            lookup("ensemble:retrac+nope")
                .err()
                .unwrap()
                .to_string()
                .contains("nope")
        );
        assert!(lookup("ensemble:retrac+ensemble:kfac+pixel").is_err());
    }
}
