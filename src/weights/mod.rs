//! Weight files to networks: formats (`pytorch`, `safetensors`, `onnx`, read into one neutral
//! set of named tensors, [`Weights`](crate::Weights)); `names` (layout and zoo recognition);
//! `inflate` (the arithmetic of 2-D to 3-D); `load` (the strict mapping onto a network's
//! plan). Every call into burn-store's and onnx-ir's readers stays in this folder.

pub(crate) mod export;
pub(crate) mod format;
pub(crate) mod inflate;
pub(crate) mod inspect;
pub(crate) mod load;
pub(crate) mod names;
mod onnx;
mod onnx_native;
#[cfg(feature = "pretrained")]
pub(crate) mod pretrained;
mod pytorch;
#[cfg(feature = "pretrained")]
pub(crate) mod registry;
mod safetensors;
pub(crate) mod tensors;
pub(crate) mod zoo;
