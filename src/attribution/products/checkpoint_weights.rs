//! TracIn's checkpoint weights η_c: how much each indexed checkpoint counts in a sum over
//! checkpoints (TracIn and ReTrac read them through the gradient inputs).

/// TracIn's checkpoint weights η_c = learning rate_c × (step_c − step_{c−1}) for checkpoints
/// given as (step, learning rate), oldest first; the first checkpoint counts from step 0. A run
/// that was stopped and resumed leaves unevenly spaced checkpoints; each is weighted by the
/// stretch of training it stands for.
pub fn checkpoint_weights(checkpoints: &[(usize, f64)]) -> Vec<f64> {
    let mut previous = 0;
    checkpoints
        .iter()
        .map(|&(step, lr)| {
            let weight = lr * step.saturating_sub(previous) as f64;
            previous = step;
            weight
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uneven_checkpoints_are_weighted_by_their_stretch_of_training() {
        // A run stopped at step 777 and resumed, checkpointing every 1000 steps.
        let w = checkpoint_weights(&[(777, 1e-3), (1000, 1e-3), (2000, 5e-4)]);
        let expected = [0.777, 0.223, 0.5];
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
    }
}
