//! Model families, one file each, in candle's layout: a serde config and a forward pass.
pub mod config;
pub mod llama;
