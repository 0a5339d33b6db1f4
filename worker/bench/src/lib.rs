//! flotilla's benchmark engine: one case under one prompt variant, from documents to a judged,
//! measured answer.
//!
//! - [`documents`] reads PDF / DOCX / HTML / text; [`chunk`] cuts text into sentence-aware
//!   chunks (English and Japanese).
//! - [`retrieval`] embeds chunks (cached by document hash) and returns a question's top-k:
//!   [`bm25`] and the dense embedder fused by reciprocal rank (default), or either alone.
//! - [`prompts`] builds each prompt variant's messages (query first / last, DSPy-style
//!   structured, a user's Jinja template) and parses structured replies.
//! - [`judge`] runs local judges (explanation, then every rating scored as a continuation,
//!   G-Eval); [`openai`] asks OpenAI-compatible endpoints; [`pairwise`] compares two
//!   variants' answers with the positions swapped.
//! - [`metrics`] computes exact / regex match, token F1, fabricated URLs and numbers.
//! - [`runner`] runs cases: context, answer, structured parse and retry, judges, metrics;
//!   the model under test is local or behind an endpoint ([`api_model`]).
//! - [`setup`] resolves named judges once ([`setup::JudgePanel`]) — the one builder behind
//!   `flotilla eval` and the worker's shards.
//!
//! The words it records in (cases, [`flotilla_contract::CaseResult`], scales, variants) and the
//! aggregation into the final table ([`report`], [`stats`]) belong to `flotilla-contract` and
//! are re-exported here under their old paths. It owns no scheduling and no storage.

pub mod api_model;
pub mod bm25;
pub mod chunk;
pub mod documents;
pub mod judge;
pub mod metrics;
pub mod openai;
pub mod pairwise;
pub mod prompts;
pub mod retrieval;
pub mod runner;
pub mod setup;

pub use flotilla_contract::{dataset, report, stats};
