//! The integration tests, one module per part of retrace, linked into one test binary: each
//! binary links all of burn and wgpu, so one binary instead of thirteen saves minutes of
//! linking and gigabytes of disk in CI. Run one part with a filter, e.g.
//! `cargo test --release --test integration kfac::`.

mod common;

mod attribution;
mod classifier;
mod data_loading;
mod diffusers;
mod diffusion;
mod evaluation;
mod families;
mod fuzz;
mod grad_capture;
mod grad_projection;
mod index;
mod kfac;
mod kill_campaign;
mod mucs;
mod rgb;
#[cfg(feature = "viewer")]
mod viewer;
