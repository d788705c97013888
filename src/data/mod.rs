//! Training data: labelled scans on disk.
//!
//! - [`LabelledScans`]: a CSV of scans (`path`), their class (`label`) and optionally their
//!   split (`split`: train, valid, test), checked whole before anything is trained; without a
//!   split column, a seeded split stratified by class.

mod labels;

pub use labels::{LabelledScan, LabelledScans, Split};
