//! The frozen network: the model's plan lowered through the one fold-and-pack step, run on
//! channels-last buffers.

pub(crate) mod network;
