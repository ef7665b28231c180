//! The attribution methods, one file each; [`super::registry`] lists them. A method imports
//! the method trait, the context and the shared products, never another method's file.

pub mod das;
pub mod ensemble;
pub mod feature_nn;
pub mod journey;
pub mod kfac;
pub mod mucs;
pub mod nda;
pub mod pixel;
pub mod retrac;
pub mod tracin;
pub mod trak;
