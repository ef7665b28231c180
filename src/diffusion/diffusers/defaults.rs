//! diffusers' default values that several configs share (`#[serde(default = "…")]` needs a
//! function for each).

pub(super) fn one() -> usize {
    1
}
pub(super) fn two() -> usize {
    2
}
pub(super) fn three() -> usize {
    3
}
pub(super) fn four() -> usize {
    4
}
pub(super) fn thirty_two() -> usize {
    32
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn silu() -> String {
    "silu".into()
}
pub(super) fn norm_eps() -> f64 {
    1e-5
}
