//! Running a model over benchmark cases: for each case and prompt variant, build the context
//! (retrieved chunks for RAG, the whole document for document analysis, with a visible
//! truncation policy when it does not fit), generate, parse structured answers, judge, and
//! compute the deterministic metrics. A case that fails (a missing or unreadable document) is
//! recorded with its error; the others still run.
//!
//! Generation and judging are two steps: [`Runner::generate`] answers cases and computes the
//! metrics (no verdicts), [`judge_result`] adds the jury's verdicts and score to such a
//! result. A cluster runs them as separate shards, possibly on different workers;
//! [`Runner::run`] (`flotilla eval`) does both, case by case.

use super::api_model::{estimate_tokens, EndpointModel};
use super::dataset::{Case, Task};
use super::documents::{load_document, Document};
use super::judge::{JudgeInput, LocalJudge};
use super::metrics::score;
use super::prompts::{build, parse_structured, PromptInputs};
use super::retrieval::{recall_at_k, Retriever};
use flotilla_contract::case_result::Metrics;
pub use flotilla_contract::case_result::{CaseResult, Truncation, TruncationRecord};
use flotilla_contract::judging::{jury_score, Verdict};
use flotilla_contract::variant::Variant;
use flotilla_engine::error::{Error, Result};
use flotilla_engine::loader::LanguageModel;
use flotilla_engine::sampling::SamplingParams;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub model_label: String,
    pub adapter_label: String,
    pub variants: Vec<Variant>,
    pub top_k: usize,
    pub truncation: Truncation,
    pub sampling: SamplingParams,
    /// A user's judge rubric (Jinja source) in place of flotilla's per-task rubrics.
    pub rubric: Option<String>,
}

/// A judge used by the runner.
pub enum Judge<'a> {
    Local(LocalJudge<'a>),
    Endpoint(super::openai::EndpointJudge),
}

impl Clone for Judge<'_> {
    fn clone(&self) -> Self {
        match self {
            Judge::Local(j) => Judge::Local(LocalJudge {
                name: j.name.clone(),
                model: j.model,
                scale: j.scale,
                explanation_tokens: j.explanation_tokens,
            }),
            Judge::Endpoint(e) => Judge::Endpoint(e.clone()),
        }
    }
}

impl Judge<'_> {
    /// The judge's name in results.
    pub fn name(&self) -> &str {
        match self {
            Judge::Local(j) => &j.name,
            Judge::Endpoint(j) => &j.name,
        }
    }

    /// The rating scale this judge rates on.
    pub fn scale(&self) -> flotilla_contract::judging::Scale {
        match self {
            Judge::Local(j) => j.scale,
            Judge::Endpoint(j) => j.scale,
        }
    }

    fn verdict(&self, input: &JudgeInput) -> Result<Verdict> {
        match self {
            Judge::Local(j) => j.judge(input),
            Judge::Endpoint(j) => Ok(j.judge(input)),
        }
    }
}

/// The model under test: a local model, or one behind an OpenAI-compatible endpoint.
#[derive(Clone, Copy)]
pub enum Answerer<'a> {
    Local(&'a LanguageModel),
    Endpoint(&'a EndpointModel),
}

impl<'a> From<&'a LanguageModel> for Answerer<'a> {
    fn from(m: &'a LanguageModel) -> Self {
        Answerer::Local(m)
    }
}

impl<'a> From<&'a EndpointModel> for Answerer<'a> {
    fn from(m: &'a EndpointModel) -> Self {
        Answerer::Endpoint(m)
    }
}

impl Answerer<'_> {
    /// Tokens of `text` in this model's tokenizer; an estimate for an endpoint's model
    /// ([`estimate_tokens`]).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        match self {
            Answerer::Local(m) => Ok(m.tokenizer.encode(text, false)?.len()),
            Answerer::Endpoint(_) => Ok(estimate_tokens(text)),
        }
    }
}

/// Runs cases; holds the document and retrieval caches for a whole run.
pub struct Runner<'a> {
    pub model: Answerer<'a>,
    pub retriever: Option<&'a Retriever<'a>>,
    pub judges: Vec<Judge<'a>>,
    pub settings: EvalSettings,
    documents: HashMap<PathBuf, std::result::Result<Document, String>>,
}

impl<'a> Runner<'a> {
    pub fn new(
        model: impl Into<Answerer<'a>>,
        retriever: Option<&'a Retriever<'a>>,
        judges: Vec<Judge<'a>>,
        settings: EvalSettings,
    ) -> Self {
        Self {
            model: model.into(),
            retriever,
            judges,
            settings,
            documents: HashMap::new(),
        }
    }

    fn documents(&mut self, case: &Case) -> std::result::Result<Vec<Document>, String> {
        let mut out = Vec::new();
        for p in &case.documents {
            let entry = self
                .documents
                .entry(p.clone())
                .or_insert_with(|| load_document(p).map_err(|e| e.to_string()));
            out.push(entry.clone()?);
        }
        Ok(out)
    }

    /// Run every case under every variant, generating and judging, calling `progress` after
    /// each.
    pub fn run(&mut self, cases: &[Case], progress: impl FnMut(&CaseResult)) -> Vec<CaseResult> {
        self.each(cases, true, progress)
    }

    /// The generation step alone: every case under every variant, answered and measured
    /// (metrics, tokens, latency) but not judged: `verdicts` stay empty and `score` none.
    /// Criteria cases have nothing to generate; their result carries the text to judge.
    pub fn generate(
        &mut self,
        cases: &[Case],
        progress: impl FnMut(&CaseResult),
    ) -> Vec<CaseResult> {
        self.each(cases, false, progress)
    }

    /// Every case under every variant: generated, and judged when `judge` (then the latency
    /// covers the judging too).
    fn each(
        &mut self,
        cases: &[Case],
        judge: bool,
        mut progress: impl FnMut(&CaseResult),
    ) -> Vec<CaseResult> {
        let mut results = Vec::new();
        let seed = self.settings.sampling.seed;
        for case in cases {
            for v in self.variants_for(case) {
                // Criteria cases have nothing to sample: one result each.
                let samples = if case.task == Task::Criteria {
                    1
                } else {
                    self.settings.sampling.samples.max(1)
                };
                for sample in 0..samples {
                    self.settings.sampling.seed = seed.wrapping_add(sample as u64);
                    let t0 = Instant::now();
                    let mut r = self.generate_case(case, &v);
                    r.sample = sample;
                    if judge {
                        judge_result(
                            &self.judges,
                            &mut r,
                            case.criteria.as_deref(),
                            self.settings.rubric.as_deref(),
                        );
                        r.latency_s = t0.elapsed().as_secs_f64();
                    }
                    progress(&r);
                    results.push(r);
                }
            }
        }
        self.settings.sampling.seed = seed;
        results
    }

    /// Criteria cases grade the case's own text: one result, whatever the variant.
    fn variants_for(&self, case: &Case) -> Vec<Variant> {
        if case.task == Task::Criteria {
            vec![self.settings.variants[0].clone()]
        } else {
            self.settings.variants.clone()
        }
    }

    fn blank(&self, case: &Case, variant: &Variant) -> CaseResult {
        CaseResult {
            case_id: case.id.clone(),
            task: case.task,
            language: case.language.clone(),
            model: self.settings.model_label.clone(),
            adapter: self.settings.adapter_label.clone(),
            variant: if case.task == Task::Criteria {
                "criteria".into()
            } else {
                variant.name()
            },
            query: case.query.clone(),
            reference_answer: case.reference_answer.clone(),
            prompt: String::new(),
            raw_answer: String::new(),
            answer: String::new(),
            hits: Vec::new(),
            recall_at_k: None,
            context_recall: None,
            truncation: None,
            parse_error: None,
            parse_retried: false,
            parse_failed: false,
            sample: 0,
            context: String::new(),
            retry_prompt_tokens: 0,
            retry_completion_tokens: 0,
            verdicts: Vec::new(),
            score: None,
            metrics: Metrics::default(),
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_s: 0.0,
            error: None,
        }
    }

    fn generate_case(&mut self, case: &Case, variant: &Variant) -> CaseResult {
        let mut r = self.blank(case, variant);
        if let Err(e) = self.try_generate_case(case, variant, &mut r) {
            r.error = Some(e.to_string());
        }
        r
    }

    fn try_generate_case(
        &mut self,
        case: &Case,
        variant: &Variant,
        r: &mut CaseResult,
    ) -> Result<()> {
        let t0 = Instant::now();
        if case.task == Task::Criteria {
            // Nothing to generate: the judge reads the case's text against its rubric.
            r.answer = case.query.clone();
            return Ok(());
        }
        let docs = self.documents(case).map_err(Error::input)?;
        let context = match case.task {
            Task::Rag => {
                let retriever = self.retriever.ok_or_else(|| {
                    Error::input("RAG cases need an embedding model (--embedder)")
                })?;
                let retrieved = tracing::info_span!(
                    target: "flotilla_trace",
                    "retrieve",
                    case = %case.id,
                    top_k = self.settings.top_k
                )
                .in_scope(|| retriever.retrieve(&case.query, &docs, self.settings.top_k))?;
                r.recall_at_k = recall_at_k(&retrieved, &case.gold_passages);
                r.hits = retriever.fit(retrieved, &|t| self.model.count_tokens(t))?;
                r.context_recall = recall_at_k(&r.hits, &case.gold_passages);
                super::retrieval::numbered_context(&r.hits)
            }
            _ => {
                let whole = super::retrieval::whole_text(&docs);
                let (text, record) = self.fit_document(case, variant, &whole)?;
                r.truncation = record;
                text
            }
        };
        r.context = context.clone();
        let inputs = PromptInputs {
            question: &case.query,
            context: &context,
            language: &case.language,
        };
        let (prompt, raw, ptoks, ctoks) = self.answer(variant, &inputs, false)?;
        r.prompt = prompt;
        r.raw_answer = raw.clone();
        r.prompt_tokens = ptoks;
        r.completion_tokens = ctoks;
        r.answer = raw.trim().to_string();
        if variant.is_structured() {
            let prefixed = matches!(variant, Variant::StructuredConstrained);
            match parse_structured(&raw, prefixed) {
                Ok(a) => r.answer = a,
                Err(e) => {
                    r.parse_retried = true;
                    let (_, raw2, p2, c2) = self.answer(variant, &inputs, true)?;
                    r.retry_prompt_tokens = p2;
                    r.retry_completion_tokens = c2;
                    r.raw_answer = format!("{raw}\n--- retry ---\n{raw2}");
                    match parse_structured(&raw2, prefixed) {
                        Ok(a) => {
                            r.answer = a;
                            r.parse_error = Some(e.0);
                        }
                        Err(e2) => {
                            // A failure: not judged (rated at the scale's minimum by the
                            // judging step), measured as an empty answer.
                            r.parse_failed = true;
                            r.answer = String::new();
                            r.parse_error = Some(format!("{}; the retry: {}", e.0, e2.0));
                        }
                    }
                }
            }
        }
        let sources = format!(
            "{}\n{}\n{}",
            r.prompt,
            docs.iter()
                .map(|d| d.text.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            case.query
        );
        let pattern = case
            .answer_regex
            .as_deref()
            .and_then(|re| regex::Regex::new(re).ok());
        r.metrics = score(
            &r.answer,
            case.reference_answer.as_deref(),
            pattern.as_ref(),
            &sources,
            &case.language,
        );
        r.latency_s = t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Generate an answer; returns (rendered prompt, reply text, prompt tokens, completion tokens).
    fn answer(
        &self,
        variant: &Variant,
        inputs: &PromptInputs,
        strict: bool,
    ) -> Result<(String, String, usize, usize)> {
        let built = build(variant, inputs, strict)?;
        let span = tracing::info_span!(
            target: "flotilla_trace",
            "generate",
            prompt_tokens = tracing::field::Empty,
            completion_tokens = tracing::field::Empty
        );
        let _entered = span.enter();
        let answered = self.answer_built(&built)?;
        span.record("prompt_tokens", answered.2);
        span.record("completion_tokens", answered.3);
        Ok(answered)
    }

    fn answer_built(
        &self,
        built: &super::prompts::BuiltPrompt,
    ) -> Result<(String, String, usize, usize)> {
        let model = match self.model {
            Answerer::Local(m) => m,
            Answerer::Endpoint(e) => return answer_over_api(e, built, &self.settings.sampling),
        };
        let mut params = self.settings.sampling.clone();
        let mut prompt = model.render_chat_with(&built.messages, true, params.enable_thinking)?;
        if let Some(p) = &built.assistant_prefix {
            prompt.push_str(p);
        }
        let ids = model.tokenizer.encode(&prompt, false)?;
        params.stop.extend(built.stop.iter().cloned());
        let (out, _) = model.generate_ids(std::slice::from_ref(&ids), &params)?;
        let c = &out[0];
        // A thinking model's reasoning is not its answer: the judge and the metrics see the
        // text after `</think>`.
        let answer = flotilla_engine::strip_thinking(&c.text).to_string();
        Ok((prompt, answer, c.prompt_tokens, c.completion_tokens))
    }

    /// The document text that fits the context next to the prompt and the answer budget.
    fn fit_document(
        &self,
        case: &Case,
        variant: &Variant,
        text: &str,
    ) -> Result<(String, Option<TruncationRecord>)> {
        let lm = match self.model {
            Answerer::Local(m) => m,
            // The endpoint's context is not known here: the whole document goes, and an
            // endpoint that refuses it fails the case with its own error.
            Answerer::Endpoint(_) => return Ok((text.to_string(), None)),
        };
        let ctx = lm.model.config().max_position_embeddings;
        let inputs = PromptInputs {
            question: &case.query,
            context: "",
            language: &case.language,
        };
        let built = build(variant, &inputs, true)?;
        let overhead = lm
            .tokenizer
            .encode(&lm.render_chat(&built.messages, true)?, false)?
            .len()
            + 16;
        let budget = ctx.saturating_sub(overhead + self.settings.sampling.max_tokens);
        let ids = lm.tokenizer.encode(text, false)?;
        if ids.len() <= budget {
            return Ok((text.to_string(), None));
        }
        if budget < 32 {
            return Err(Error::input(format!(
                "the model's context ({ctx} tokens) leaves no room for the document"
            )));
        }
        let kept = match self.settings.truncation {
            Truncation::Head => lm.tokenizer.decode(&ids[..budget], false)?,
            Truncation::HeadTail => {
                let half = (budget - 8) / 2;
                format!(
                    "{}\n[...]\n{}",
                    lm.tokenizer.decode(&ids[..half], false)?,
                    lm.tokenizer.decode(&ids[ids.len() - half..], false)?
                )
            }
        };
        Ok((
            kept,
            Some(TruncationRecord {
                policy: self.settings.truncation,
                original_tokens: ids.len(),
                kept_tokens: budget,
            }),
        ))
    }
}

/// An answer from a model behind an endpoint: (the messages as text, reply, prompt tokens,
/// completion tokens).
fn answer_over_api(
    e: &EndpointModel,
    built: &super::prompts::BuiltPrompt,
    sampling: &SamplingParams,
) -> Result<(String, String, usize, usize)> {
    if built.assistant_prefix.is_some() {
        return Err(Error::input(format!(
            "model {}: structured_constrained writes the start of the reply itself, which a \
             model behind an API cannot continue; use structured",
            e.spec
        )));
    }
    let prompt = built
        .messages
        .iter()
        .map(|m| format!("[{}]\n{}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n\n");
    let reply = e
        .chat(&built.messages, sampling, &built.stop)
        .map_err(Error::input)?;
    Ok((
        prompt,
        reply.text,
        reply.prompt_tokens,
        reply.completion_tokens,
    ))
}

/// The judging step: the jury's verdicts on a generated result, and its score.
///
/// A criteria case (`criteria` is its rubric) is judged as its own text against the rubric;
/// any other case as its answer against the reference answer. A result whose generation
/// failed is left as it is; a judge that fails records its error on the result.
pub fn judge_result(
    judges: &[Judge],
    r: &mut CaseResult,
    criteria: Option<&str>,
    rubric: Option<&str>,
) {
    if r.error.is_some() {
        return;
    }
    let span = tracing::info_span!(
        target: "flotilla_trace",
        "judge",
        case = %r.case_id,
        judges = judges.len(),
        score = tracing::field::Empty
    );
    let _entered = span.enter();
    judge_scored(judges, r, criteria, rubric);
    if let Some(score) = r.score {
        span.record("score", score);
    }
}

fn judge_scored(
    judges: &[Judge],
    r: &mut CaseResult,
    criteria: Option<&str>,
    rubric: Option<&str>,
) {
    if r.parse_failed {
        // A structured answer that could not be read is a failure, never judged on its raw
        // text: it gets the scale's minimum.
        r.verdicts.clear();
        r.score = judges.first().map(|j| j.scale().min as f64);
        return;
    }
    let input = match (r.task, criteria) {
        (Task::Criteria, criterion) => JudgeInput::Criteria {
            text: &r.query,
            rubric: criterion.unwrap_or_default(),
            template: rubric,
        },
        (task, _) => JudgeInput::Reference {
            task,
            question: &r.query,
            reference: r.reference_answer.as_deref(),
            answer: &r.answer,
            context: &r.context,
            template: rubric,
        },
    };
    match judges
        .iter()
        .map(|j| j.verdict(&input))
        .collect::<Result<Vec<_>>>()
    {
        Ok(verdicts) => {
            r.score = jury_score(&verdicts);
            r.verdicts = verdicts;
        }
        Err(e) => r.error = Some(e.to_string()),
    }
}
