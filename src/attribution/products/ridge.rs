//! The kernel of TRAK-style scores (Park et al. 2023; D-TRAK, Zheng et al. 2024): with the
//! training features Φ (one row per training image) and a query's features φ_q, the scores of
//! every training image are Φ (ΦᵀΦ + λI)⁻¹ φ_q — a ridge regression of the query on the training
//! features. By the push-through identity this equals (ΦΦᵀ + λI)⁻¹ Φ φ_q, so the kernel is
//! factored in whichever form is smaller: the primal d×d one when there are more images than
//! features, the dual N×N one otherwise. The factorisation (a Cholesky, in f64 on the host)
//! is done once per index and λ; each query is then two triangular solves and a product.

use crate::attribution::error::AttributionError;

use nalgebra::{Cholesky, DMatrix, DVector, Dyn};

/// Which side of the push-through identity the kernel is factored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RidgeForm {
    /// (ΦᵀΦ + λI), d × d: fewer features than images.
    Primal,
    /// (ΦΦᵀ + λI), N × N: fewer images than features.
    Dual,
}

/// The factored kernel of training features Φ (N × d) and damping λ.
pub struct RidgeKernel {
    rows: usize,
    dim: usize,
    form: RidgeForm,
    factor: Cholesky<f64, Dyn>,
}

impl RidgeKernel {
    /// Factors the kernel of `features` (`rows` × `dim`, row-major) with damping `lambda` > 0.
    pub fn fit(features: &[f32], rows: usize, dim: usize, lambda: f64) -> Result<Self, AttributionError> {
        if features.len() != rows * dim || rows == 0 || dim == 0 {
            return Err(AttributionError::Invalid(format!(
                "the kernel needs {rows} × {dim} features, got {} values",
                features.len()
            )));
        }
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(AttributionError::Invalid(format!(
                "the kernel's damping must be positive, not {lambda}"
            )));
        }
        if let Some(bad) = features.iter().position(|v| !v.is_finite()) {
            return Err(AttributionError::NonFinite(format!(
                "training image {} has a non-finite feature",
                bad / dim
            )));
        }
        let phi = DMatrix::<f64>::from_row_iterator(rows, dim, features.iter().map(|&v| v as f64));
        let (form, gram) = if dim <= rows {
            (RidgeForm::Primal, phi.tr_mul(&phi))
        } else {
            (RidgeForm::Dual, &phi * phi.transpose())
        };
        let size = gram.nrows();
        let damped = gram + DMatrix::<f64>::identity(size, size) * lambda;
        let factor = Cholesky::new(damped)
            .ok_or_else(|| AttributionError::Invalid("the damped kernel is not positive definite".into()))?;
        Ok(Self {
            rows,
            dim,
            form,
            factor,
        })
    }

    /// The form the kernel was factored in.
    pub fn form(&self) -> RidgeForm {
        self.form
    }

    /// The scores Φ (ΦᵀΦ + λI)⁻¹ φ_q of every training image (the features the kernel was fitted
    /// on, row-major) for the query's features `query` (length d).
    pub fn scores(&self, features: &[f32], query: &[f32]) -> Result<Vec<f64>, AttributionError> {
        if features.len() != self.rows * self.dim || query.len() != self.dim {
            return Err(AttributionError::Invalid(format!(
                "the kernel was fitted on {} × {} features; got {} training values and a query of {}",
                self.rows,
                self.dim,
                features.len(),
                query.len()
            )));
        }
        let phi = DMatrix::<f64>::from_row_iterator(self.rows, self.dim, features.iter().map(|&v| v as f64));
        let q = DVector::<f64>::from_iterator(self.dim, query.iter().map(|&v| v as f64));
        let scores = match self.form {
            RidgeForm::Primal => &phi * self.factor.solve(&q),
            RidgeForm::Dual => self.factor.solve(&(&phi * q)),
        };
        Ok(scores.iter().copied().collect())
    }

    /// The weighted features Ψ = Φ (ΦᵀΦ + λI)⁻¹ = (ΦΦᵀ + λI)⁻¹ Φ (N × d, row-major) of the
    /// features the kernel was fitted on: every query's scores are then Ψ φ_q, one product.
    pub fn weighted_features(&self, features: &[f32]) -> Result<Vec<f32>, AttributionError> {
        if features.len() != self.rows * self.dim {
            return Err(AttributionError::Invalid(format!(
                "the kernel was fitted on {} × {} features; got {} values",
                self.rows,
                self.dim,
                features.len()
            )));
        }
        let phi = DMatrix::<f64>::from_row_iterator(self.rows, self.dim, features.iter().map(|&v| v as f64));
        let psi = match self.form {
            // Φ K⁻¹ = (K⁻¹ Φᵀ)ᵀ, K symmetric.
            RidgeForm::Primal => self.factor.solve(&phi.transpose()).transpose(),
            RidgeForm::Dual => self.factor.solve(&phi),
        };
        // nalgebra stores columns first; write rows.
        Ok((0..self.rows)
            .flat_map(|r| (0..self.dim).map(move |c| (r, c)))
            .map(|(r, c)| psi[(r, c)] as f32)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::noise::{gaussian, stream};

    /// Φ (ΦᵀΦ + λI)⁻¹ φ_q by a dense inverse, the definition.
    fn direct(features: &[f32], rows: usize, dim: usize, lambda: f64, query: &[f32]) -> Vec<f64> {
        let phi = DMatrix::<f64>::from_row_iterator(rows, dim, features.iter().map(|&v| v as f64));
        let q = DVector::<f64>::from_iterator(dim, query.iter().map(|&v| v as f64));
        let inverse = (phi.tr_mul(&phi) + DMatrix::<f64>::identity(dim, dim) * lambda)
            .try_inverse()
            .unwrap();
        (&phi * (inverse * q)).iter().copied().collect()
    }

    fn worst_relative(a: &[f64], b: &[f64]) -> f64 {
        let scale = a.iter().map(|v| v.abs()).fold(0.0, f64::max);
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f64::max)
    }

    #[test]
    fn both_forms_equal_a_direct_dense_solve() {
        for (rows, dim, form) in [(30, 7, RidgeForm::Primal), (6, 25, RidgeForm::Dual)] {
            let features = gaussian(&mut stream("ridge-test", &[rows as u64, dim as u64]), rows * dim);
            let query = gaussian(&mut stream("ridge-test-query", &[dim as u64]), dim);
            for lambda in [1e-3, 1.0, 100.0] {
                let kernel = RidgeKernel::fit(&features, rows, dim, lambda).unwrap();
                assert_eq!(kernel.form(), form);
                let scores = kernel.scores(&features, &query).unwrap();
                let expected = direct(&features, rows, dim, lambda, &query);
                let error = worst_relative(&expected, &scores);
                assert!(error < 1e-8, "{form:?}, λ = {lambda}: relative error {error:.2e}");
                // The stored weighted features give the same scores as one product.
                let psi = kernel.weighted_features(&features).unwrap();
                let product: Vec<f64> = psi
                    .chunks(dim)
                    .map(|row| row.iter().zip(&query).map(|(a, b)| (a * b) as f64).sum())
                    .collect();
                let error = worst_relative(&expected, &product);
                assert!(
                    error < 1e-5,
                    "{form:?}, λ = {lambda}: weighted features off by {error:.2e}"
                );
            }
        }
    }

    #[test]
    fn a_large_damping_leaves_dot_products_over_lambda() {
        let (rows, dim, lambda) = (8, 5, 1e8);
        let features = gaussian(&mut stream("ridge-test", &[1]), rows * dim);
        let query = gaussian(&mut stream("ridge-test-query", &[1]), dim);
        let scores = RidgeKernel::fit(&features, rows, dim, lambda)
            .unwrap()
            .scores(&features, &query)
            .unwrap();
        let dots: Vec<f64> = features
            .chunks(dim)
            .map(|row| row.iter().zip(&query).map(|(a, b)| (a * b) as f64).sum::<f64>() / lambda)
            .collect();
        assert!(worst_relative(&dots, &scores) < 1e-6);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(RidgeKernel::fit(&[1.0; 6], 2, 4, 1.0).is_err());
        assert!(RidgeKernel::fit(&[1.0; 8], 2, 4, 0.0).is_err());
        assert!(RidgeKernel::fit(&[1.0, f32::NAN, 1.0, 1.0], 2, 2, 1.0).is_err());
        let kernel = RidgeKernel::fit(&[1.0; 8], 2, 4, 1.0).unwrap();
        assert!(kernel.scores(&[1.0; 8], &[1.0; 3]).is_err());
    }
}
