//! The token estimate of `flotilla sweep check`: how many tokens a sweep's plan reads and
//! writes, counted on the real case texts and documents.
//!
//! Texts are counted with the real tokenizer of each model when the model is on this machine
//! (a GGUF file's vocabulary, a Hugging Face folder's `tokenizer.json`; the weights are not
//! loaded), else with a rough rule: 4 ASCII characters or 1 other character (Japanese,
//! Chinese) per token. Either way it is an estimate: prompt templates and chat markup are not
//! counted, RAG context is taken at its budget (`retrieval.context_tokens`) when the
//! documents are longer, a document at the model's context window, and completions at their
//! limits (`generation.max_tokens`, `judge.explanation_tokens`), which is an upper bound.

use flotilla_contract::dataset::{Case, Task};
use flotilla_contract::model_ref::{resolve, ModelSource};
use flotilla_coordinator::sweep::{Preview, Sweep};
use flotilla_engine::loader::{load_hf_tokenizer, read_gguf};
use flotilla_engine::models::config::ModelConfig;
use flotilla_engine::tokenizer::TextTokenizer;
use serde::Serialize;
use std::collections::HashMap;

/// Tokens a judge's reply takes beyond its explanation (the `Rating: [[N]]` line).
const RATING_TOKENS: u64 = 8;

/// How one model's texts were counted.
#[derive(Debug, Clone, Serialize)]
pub struct Counting {
    pub model: String,
    /// `tokenizer` (the model's own) or `characters` (the rough rule).
    pub method: &'static str,
    /// Why the rough rule was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The model's context window, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
}

/// Prompt and completion tokens of one kind of work.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tokens {
    pub prompt: u64,
    /// At most: every completion at its limit.
    pub completion_max: u64,
}

/// The estimate for the whole sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub generate: Tokens,
    pub judge: Tokens,
    /// At most: steps x sequences per step x `max_seq_len`.
    pub train_max: u64,
    /// Everything above.
    pub total_max: u64,
    pub counted_with: Vec<Counting>,
}

/// A model's tokenizer and context window, or why the rough rule stands in.
struct Counter {
    tokenizer: Option<TextTokenizer>,
    context_length: Option<u64>,
    counting: Counting,
    cache: HashMap<String, u64>,
}

impl Counter {
    fn new(spec: &str) -> Counter {
        let (tokenizer, context_length, reason) = match load_tokenizer(spec) {
            Ok((t, ctx)) => (Some(t), ctx, None),
            Err(reason) => (None, None, Some(reason)),
        };
        Counter {
            counting: Counting {
                model: spec.to_string(),
                method: if tokenizer.is_some() {
                    "tokenizer"
                } else {
                    "characters"
                },
                reason,
                context_length,
            },
            tokenizer,
            context_length,
            cache: HashMap::new(),
        }
    }

    fn count(&mut self, text: &str) -> u64 {
        if let Some(n) = self.cache.get(text) {
            return *n;
        }
        let n = match &self.tokenizer {
            Some(t) => match t.encode(text, false) {
                Ok(ids) => ids.len() as u64,
                Err(_) => rough_tokens(text),
            },
            None => rough_tokens(text),
        };
        self.cache.insert(text.to_string(), n);
        n
    }
}

/// The rough rule: 4 ASCII characters, or 1 other character, per token.
pub fn rough_tokens(text: &str) -> u64 {
    let (ascii, other) = text.chars().fold((0u64, 0u64), |(a, o), c| {
        if c.is_ascii() {
            (a + 1, o)
        } else {
            (a, o + 1)
        }
    });
    ascii.div_ceil(4) + other
}

/// A model's tokenizer (without its weights) and context window.
fn load_tokenizer(spec: &str) -> Result<(TextTokenizer, Option<u64>), String> {
    if spec.is_empty() || spec.starts_with("openai:") {
        return Err("an endpoint (openai:) model: its tokenizer is not known here".into());
    }
    let source = resolve(spec).map_err(|e| format!("not on this machine: {e}"))?;
    match source {
        ModelSource::Gguf(path) => {
            let (content, _) = read_gguf(&path).map_err(|e| e.to_string())?;
            let tokenizer = TextTokenizer::from_gguf(&content, &path).map_err(|e| e.to_string())?;
            let ctx = ModelConfig::from_gguf(&content, &path)
                .ok()
                .map(|c| c.max_position_embeddings as u64);
            Ok((tokenizer, ctx))
        }
        ModelSource::HfDir(dir) => {
            let (tokenizer, _) = load_hf_tokenizer(&dir).map_err(|e| e.to_string())?;
            let ctx = ModelConfig::from_hf_json(&dir.join("config.json"))
                .ok()
                .map(|c| c.max_position_embeddings as u64);
            Ok((tokenizer, ctx))
        }
    }
}

/// Document texts by sweep-path key, read once.
struct Documents<'a> {
    preview: &'a Preview,
    texts: HashMap<String, String>,
}

impl Documents<'_> {
    fn text(&mut self, key: &str) -> &str {
        if !self.texts.contains_key(key) {
            // A document that cannot be read was already reported by the check; count nothing.
            let text = self
                .preview
                .files
                .get(key)
                .and_then(|(path, _)| flotilla_bench::documents::load_document(path).ok())
                .map(|d| d.text)
                .unwrap_or_default();
            self.texts.insert(key.to_string(), text);
        }
        self.texts.get(key).map(String::as_str).unwrap_or_default()
    }
}

/// Tokens of the context a case's prompt carries: retrieved passages up to the budget, or the
/// whole document up to the model's window.
fn context_tokens(
    sweep: &Sweep,
    case: &Case,
    counter: &mut Counter,
    docs: &mut Documents,
    question: u64,
) -> u64 {
    let full: u64 = case
        .documents
        .iter()
        .map(|d| {
            let text = docs.text(&d.to_string_lossy()).to_string();
            counter.count(&text)
        })
        .sum();
    match case.task {
        Task::Rag => full.min(sweep.retrieval.chunks.context_tokens as u64),
        Task::Document => match counter.context_length {
            Some(ctx) => full.min(ctx.saturating_sub(sweep.sampling.max_tokens as u64 + question)),
            None => full,
        },
        Task::Criteria => 0,
    }
}

/// Estimate the tokens of a planned sweep.
pub fn estimate(sweep: &Sweep, preview: &Preview) -> Estimate {
    let mut counters: Vec<Counter> = Vec::new();
    fn counter_of(spec: &str, counters: &mut Vec<Counter>) -> usize {
        match counters.iter().position(|c| c.counting.model == spec) {
            Some(i) => i,
            None => {
                counters.push(Counter::new(spec));
                counters.len() - 1
            }
        }
    }
    let mut docs = Documents {
        preview,
        texts: HashMap::new(),
    };
    let max_tokens = sweep.sampling.max_tokens as u64;
    let (mut generate, mut judge) = (Tokens::default(), Tokens::default());
    let mut train_max = 0;
    for job in &preview.jobs {
        match job.kind.as_str() {
            "generate" => {
                let i = counter_of(&job.model, &mut counters);
                let c = &mut counters[i];
                for case in job.cases.iter().filter(|c| c.task != Task::Criteria) {
                    let q = c.count(&case.query);
                    generate.prompt += q + context_tokens(sweep, case, c, &mut docs, q);
                    generate.completion_max += max_tokens;
                }
            }
            "judge" => {
                let judges = job.judgements.checked_div(job.items).unwrap_or(1);
                let i = counter_of(&job.model, &mut counters);
                let c = &mut counters[i];
                for case in &job.cases {
                    let prompt = match (&case.task, &case.criteria) {
                        (Task::Criteria, rubric) => {
                            c.count(&case.query) + c.count(rubric.as_deref().unwrap_or_default())
                        }
                        _ => {
                            let q = c.count(&case.query);
                            q + context_tokens(sweep, case, c, &mut docs, q)
                                + c.count(case.reference_answer.as_deref().unwrap_or_default())
                                + max_tokens
                        }
                    };
                    judge.prompt += prompt * judges;
                    judge.completion_max +=
                        (sweep.judge.explanation_tokens as u64 + RATING_TOKENS) * judges;
                }
            }
            _ => {
                if let Some(t) = &job.train {
                    train_max += t.steps * t.sequences_per_step * t.max_seq_len;
                }
            }
        }
    }
    Estimate {
        total_max: generate.prompt
            + generate.completion_max
            + judge.prompt
            + judge.completion_max
            + train_max,
        generate,
        judge,
        train_max,
        counted_with: counters.into_iter().map(|c| c.counting).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::rough_tokens;

    #[test]
    fn the_rough_rule_counts_ascii_by_fours_and_other_characters_one_by_one() {
        assert_eq!(rough_tokens(""), 0);
        assert_eq!(rough_tokens("abcd"), 1);
        assert_eq!(rough_tokens("abcde"), 2);
        assert_eq!(rough_tokens("富士山"), 3);
        assert_eq!(rough_tokens("Mt 富士"), 3);
    }
}
