//! The benchmark engine's inputs: case files, document text, chunking. (The runner, prompt
//! variants, judges and statistics build on these.)
pub mod chunk;
pub mod dataset;
pub mod documents;
pub mod judge;
pub mod metrics;
pub mod openai;
pub mod prompts;
pub mod report;
pub mod retrieval;
pub mod runner;
pub mod stats;
