//! Judges: a rubric prompt that asks for an explanation and then `Rating: [[N]]`.
//!
//! A local judge never fails to parse: it writes its explanation freely, then flotilla writes
//! `Rating: [[` itself and scores every rating in the scale as a continuation, so the rating
//! is the most likely valid one, and the G-Eval score (the probability-weighted mean rating)
//! comes from the same pass. A remote judge's text is parsed; an invalid rating is recorded
//! with the raw text, never dropped.

use flotilla_contract::dataset::Task;
pub use flotilla_contract::judging::{jury_score, Scale, Verdict};
use flotilla_engine::chat::ChatMessage;
use flotilla_engine::error::{Error, Result};
use flotilla_engine::loader::LanguageModel;
use flotilla_engine::sampling::SamplingParams;
use regex::Regex;
use std::sync::OnceLock;

/// What is judged.
#[derive(Debug, Clone)]
pub enum JudgeInput<'a> {
    /// A generated answer, judged against the reference answer (when the case has one) and
    /// the context the model was given (retrieved passages or the document).
    Reference {
        task: Task,
        question: &'a str,
        reference: Option<&'a str>,
        answer: &'a str,
        context: &'a str,
        /// A user's rubric (Jinja source) in place of flotilla's for the task.
        template: Option<&'a str>,
    },
    /// A text against a rubric (Flow's criteria cases).
    Criteria {
        text: &'a str,
        rubric: &'a str,
        template: Option<&'a str>,
    },
}

/// Renders `source` once on a made-up case, so a broken rubric template is one clear error
/// before anything runs.
pub fn check_rubric(source: &str) -> std::result::Result<(), String> {
    let input = JudgeInput::Reference {
        task: Task::Rag,
        question: "q",
        reference: Some("r"),
        answer: "a",
        context: "c",
        template: Some(source),
    };
    render_rubric(source, &input, "c", Scale::default()).map(|_| ())
}

/// The judge's request rendered from a user's rubric template (docs/EVAL.md): `question`,
/// `reference` (empty when none), `answer`, `context` (already cut to fit), `task`, and for
/// criteria cases `text` and `criterion`; `scale_min`, `scale_max`.
fn render_rubric(
    source: &str,
    input: &JudgeInput,
    context: &str,
    scale: Scale,
) -> std::result::Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("rubric", source)
        .map_err(|e| format!("rubric template: {e}"))?;
    let vars = match input {
        JudgeInput::Reference {
            task,
            question,
            reference,
            answer,
            ..
        } => minijinja::context! {
            task => task.name(), question => question, reference => reference.unwrap_or_default(),
            answer => answer, context => context, text => "", criterion => "",
            scale_min => scale.min, scale_max => scale.max,
        },
        JudgeInput::Criteria { text, rubric, .. } => minijinja::context! {
            task => "criteria", question => "", reference => "", answer => text, context => "",
            text => text, criterion => rubric, scale_min => scale.min, scale_max => scale.max,
        },
    };
    env.get_template("rubric")
        .and_then(|t| t.render(vars))
        .map_err(|e| format!("rubric template: {e}"))
}

/// Characters of context an endpoint judge is shown at most (a local judge's limit comes from
/// its own context window).
pub const ENDPOINT_CONTEXT_CHARS: usize = 24_000;

/// The rubric of a generated answer, per task: RAG answers must be faithful to the retrieved
/// passages and match the reference; document answers complete and grounded in the document.
fn rubric(task: Task, has_reference: bool, has_context: bool) -> &'static str {
    match (task, has_reference, has_context) {
        (Task::Rag, true, true) => {
            "Rate the answer on two things. Faithfulness: every statement in it must be supported              by the retrieved passages; an answer that adds facts, numbers or URLs that are not              in the passages is wrong even when it sounds right. Correctness: it must give the              facts of the reference answer. A faithful answer that misses the reference's facts              is incomplete; a fluent answer that contradicts the passages or the reference is              the worst."
        }
        (Task::Document, true, true) => {
            "Rate the answer on two things. Completeness: it must cover what the reference              answer says. Grounding: everything it states must be in the document; invented              facts, numbers or URLs make it wrong even when it sounds right."
        }
        (_, true, _) => {
            "Rate how correct and complete the answer is compared with the reference answer.              Penalise invented facts."
        }
        (_, false, true) => {
            "There is no reference answer. Rate whether the answer actually answers the question              and whether everything it states is supported by the context; invented facts,              numbers or URLs make it wrong."
        }
        (_, false, false) => {
            "There is no reference answer. Rate whether the answer actually answers the question,              correctly and without invented facts."
        }
    }
}

/// The context cut to at most `limit` characters, with a visible note where the cut is; the
/// second value says what was shown (`None`: shown whole).
pub fn fit_context(context: &str, limit: usize) -> (String, Option<String>) {
    let total = context.chars().count();
    if total <= limit {
        return (context.to_string(), None);
    }
    let kept: String = context.chars().take(limit).collect();
    let note = format!("{limit} of {total} characters");
    (
        format!("{kept}\n[... the rest of the context is cut here: {note} shown ...]"),
        Some(note),
    )
}

/// The messages of the judge prompt, the context cut to `context_limit` characters; the
/// second value says what was shown of a cut context.
pub fn judge_messages(
    input: &JudgeInput,
    scale: Scale,
    context_limit: usize,
) -> std::result::Result<(Vec<ChatMessage>, Option<String>), String> {
    let system = format!(
        "You are an impartial judge. Assess the response below, explain your assessment in two or \
         three sentences, and then give a rating from {} (worst) to {} (best) in exactly this \
         format: \"Rating: [[N]]\", where N is the whole number you give.",
        scale.min, scale.max
    );
    // No example value: a small judge copies one (issue 11: 44 of 48 quickstart ratings were
    // the example's 5).
    let mut cut = None;
    let user = match input {
        JudgeInput::Reference {
            context,
            template: Some(source),
            ..
        } => {
            let (shown, note) = fit_context(context, context_limit);
            cut = note;
            render_rubric(source, input, &shown, scale)?
        }
        JudgeInput::Criteria {
            template: Some(source),
            ..
        } => render_rubric(source, input, "", scale)?,
        JudgeInput::Reference {
            task,
            question,
            reference,
            answer,
            context,
            template: None,
        } => {
            let reference = reference.filter(|r| !r.trim().is_empty());
            let has_context = !context.trim().is_empty();
            let mut u = format!(
                "{}\n\n[Question]\n{question}\n\n",
                rubric(*task, reference.is_some(), has_context)
            );
            if has_context {
                let (shown, note) = fit_context(context, context_limit);
                cut = note;
                let label = if *task == Task::Rag {
                    "Retrieved passages"
                } else {
                    "Document"
                };
                u.push_str(&format!("[{label}]\n{shown}\n\n"));
            }
            if let Some(r) = reference {
                u.push_str(&format!("[Reference answer]\n{r}\n\n"));
            }
            u.push_str(&format!("[Answer]\n{answer}"));
            u
        }
        JudgeInput::Criteria {
            text,
            rubric,
            template: None,
        } => format!(
            "Rate how well the text meets the criterion.\n\n[Criterion]\n{rubric}\n\n[Text]\n{text}"
        ),
    };
    Ok((
        vec![
            ChatMessage::new("system", system),
            ChatMessage::new("user", user),
        ],
        cut,
    ))
}

fn rating_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"Rating:\s*\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]").expect("rating regex")
    })
}

/// Why a model's reply could not be read (no valid rating, no structured answer). It is
/// recorded with the case (`Verdict.error`, `CaseResult.parse_error`), never dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplyError(pub String);

impl std::ops::Deref for ReplyError {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Read `Rating: [[N]]` (the last one) from a reply; an error says why it is not valid.
pub fn parse_rating(reply: &str, scale: Scale) -> std::result::Result<f64, ReplyError> {
    let m = rating_re()
        .captures_iter(reply)
        .last()
        .ok_or_else(|| ReplyError("no `Rating: [[N]]` in the reply".into()))?;
    let v: f64 = m[1]
        .parse()
        .map_err(|_| ReplyError(format!("`{}` is not a number", &m[1])))?;
    if v < scale.min as f64 || v > scale.max as f64 {
        return Err(ReplyError(format!(
            "rating {v} is outside {}-{}",
            scale.min, scale.max
        )));
    }
    Ok(v)
}

/// A judge backed by a local model.
pub struct LocalJudge<'a> {
    pub name: String,
    pub model: &'a LanguageModel,
    pub scale: Scale,
    /// Tokens allowed for the explanation.
    pub explanation_tokens: usize,
}

impl LocalJudge<'_> {
    pub fn judge(&self, input: &JudgeInput) -> Result<Verdict> {
        let context_chars = match input {
            JudgeInput::Reference { context, .. } => context.chars().count(),
            JudgeInput::Criteria { .. } => 0,
        };
        let (prompt, prompt_ids, context_cut) = self.fitted_prompt(context_chars, |limit| {
            judge_messages(input, self.scale, limit).map_err(Error::Template)
        })?;
        let ratings: Vec<u32> = (self.scale.min..=self.scale.max).collect();
        let options: Vec<String> = ratings.iter().map(u32::to_string).collect();
        let (explanation, logp) =
            self.explain_then_choose(&prompt, &prompt_ids, "Rating:", &options)?;
        let best = (0..ratings.len())
            .max_by(|&a, &b| logp[a].total_cmp(&logp[b]))
            .ok_or_else(|| Error::input("empty rating scale"))?;
        let max = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logp.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let geval = ratings
            .iter()
            .zip(&weights)
            .map(|(r, w)| *r as f64 * w)
            .sum::<f64>()
            / total;
        let rating = ratings[best] as f64;
        Ok(Verdict {
            judge: self.name.clone(),
            rating: Some(rating),
            geval: Some(geval),
            raw: format!("{explanation}\nRating: [[{rating}]]"),
            explanation,
            error: None,
            context_cut,
        })
    }

    /// The judge writes its explanation freely (up to `explanation_tokens`, stopping at
    /// `marker`); then flotilla writes `MARKER [[` itself and scores each option (followed by
    /// `]]`) as a continuation, so the model only chooses, and never fails to parse. Returns
    /// the explanation and each option's log-probability.
    pub(crate) fn explain_then_choose(
        &self,
        prompt: &str,
        prompt_ids: &[u32],
        marker: &str,
        options: &[String],
    ) -> Result<(String, Vec<f64>)> {
        let lm = self.model;
        let params = SamplingParams {
            max_tokens: self.explanation_tokens,
            stop: vec![marker.into(), "[[".into()],
            ..Default::default()
        };
        let (out, _) = lm.generate_ids(std::slice::from_ref(&prompt_ids.to_vec()), &params)?;
        let explanation = out[0].text.trim().to_string();
        let forced = format!("{prompt}{explanation}\n{marker} [[");
        let forced_ids = lm.tokenizer.encode(&forced, false)?;
        let candidates = options
            .iter()
            .map(|o| self.continuation_ids(&forced, &forced_ids, &format!("{o}]]")))
            .collect::<Result<Vec<_>>>()?;
        let logp = lm.continuation_logprobs(&forced_ids, &candidates)?;
        Ok((explanation, logp))
    }

    /// The rendered prompt from `build(limit)` and its ids, the context (`context_chars`
    /// long) cut visibly by `build` until the prompt, the explanation and the choice fit the
    /// judge's context window.
    pub(crate) fn fitted_prompt(
        &self,
        context_chars: usize,
        build: impl Fn(usize) -> Result<(Vec<ChatMessage>, Option<String>)>,
    ) -> Result<(String, Vec<u32>, Option<String>)> {
        let lm = self.model;
        let window = lm.model.config().max_position_embeddings;
        let room = window.saturating_sub(self.explanation_tokens + 32);
        let mut limit = usize::MAX;
        for _ in 0..6 {
            let (messages, cut) = build(limit)?;
            let prompt = lm.render_chat(&messages, true)?;
            let ids = lm.tokenizer.encode(&prompt, false)?;
            if ids.len() <= room {
                return Ok((prompt, ids, cut));
            }
            let shown = context_chars.min(limit);
            if shown == 0 {
                break;
            }
            // Shrink the context by the share of tokens over the room, with a margin.
            let over = (ids.len() - room) as f64 / ids.len() as f64;
            limit = ((shown as f64) * (1.0 - over) * 0.9) as usize;
        }
        Err(Error::input(format!(
            "judge {}: the judge prompt does not fit its model's context of {window} tokens",
            self.name
        )))
    }

    /// Token ids of `text` as it continues `prefix`: tokenize the whole and keep what follows
    /// the prefix's ids, so merges across the boundary are the model's own.
    fn continuation_ids(&self, prefix: &str, prefix_ids: &[u32], text: &str) -> Result<Vec<u32>> {
        let all = self
            .model
            .tokenizer
            .encode(&format!("{prefix}{text}"), false)?;
        if all.len() > prefix_ids.len() && all[..prefix_ids.len()] == *prefix_ids {
            Ok(all[prefix_ids.len()..].to_vec())
        } else {
            self.model.tokenizer.encode(text, false)
        }
    }
}

/// A verdict from a reply text (remote judges): parsed, or recorded as invalid.
pub fn verdict_from_text(judge: &str, reply: &str, scale: Scale) -> Verdict {
    let explanation = match rating_re().find(reply) {
        Some(m) => reply[..m.start()].trim().to_string(),
        None => reply.trim().to_string(),
    };
    match parse_rating(reply, scale) {
        Ok(r) => Verdict {
            judge: judge.into(),
            rating: Some(r),
            geval: None,
            explanation,
            raw: reply.into(),
            error: None,
            context_cut: None,
        },
        Err(e) => Verdict {
            judge: judge.into(),
            rating: None,
            geval: None,
            explanation,
            raw: reply.into(),
            error: Some(e.0),
            context_cut: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_prompts_show_the_rating_format_without_an_example_value() {
        let example = Regex::new(r"\[\[\s*\d").unwrap();
        for input in [
            JudgeInput::Reference {
                task: Task::Rag,
                question: "q",
                reference: Some("r"),
                answer: "a",
                context: "[1] passage",
                template: None,
            },
            JudgeInput::Criteria {
                text: "t",
                rubric: "c",
                template: None,
            },
        ] {
            for m in judge_messages(&input, Scale { min: 1, max: 10 }, 1000)
                .unwrap()
                .0
            {
                assert!(!example.is_match(&m.content), "{}", m.content);
            }
        }
    }

    #[test]
    fn rubrics_show_the_judge_what_the_model_was_given() {
        let rag = |template| JudgeInput::Reference {
            task: Task::Rag,
            question: "When is it closed?",
            reference: Some("On Sundays."),
            answer: "Mondays.",
            context: "[1] The library is closed on Sundays. [2] More text here.",
            template,
        };
        let (m, cut) = judge_messages(&rag(None), Scale::default(), 10_000).unwrap();
        let user = &m[1].content;
        assert!(user.contains("Faithfulness"), "{user}");
        assert!(
            user.contains("[Retrieved passages]\n[1] The library"),
            "{user}"
        );
        assert!(user.contains("[Reference answer]\nOn Sundays."), "{user}");
        assert_eq!(cut, None);
        // A context longer than the limit is cut where the prompt says so.
        let (m, cut) = judge_messages(&rag(None), Scale::default(), 20).unwrap();
        assert_eq!(cut.as_deref(), Some("20 of 57 characters"));
        assert!(
            m[1].content.contains("cut here: 20 of 57 characters shown"),
            "{}",
            m[1].content
        );
        // A user's rubric template replaces the request, with the same values.
        let t = "{{ task }}|{{ question }}|{{ reference }}|{{ answer }}|{{ context }}|{{ scale_min }}-{{ scale_max }}";
        let (m, _) = judge_messages(&rag(Some(t)), Scale::FLOW, 20).unwrap();
        assert!(
            m[1].content
                .starts_with("rag|When is it closed?|On Sundays.|Mondays.|[1] The library is"),
            "{}",
            m[1].content
        );
        assert!(m[1].content.ends_with("|1-10"), "{}", m[1].content);
        assert!(
            m[0].content.contains("Rating: [[N]]"),
            "the format stays flotilla's"
        );
        // Mistakes are errors that say where.
        assert!(check_rubric("{{ question }")
            .unwrap_err()
            .contains("rubric template"));
        assert!(check_rubric("{{ no_such_variable }}").is_err());
        assert!(check_rubric(t).is_ok());
    }

    #[test]
    fn ratings_parse_the_last_valid_marker_and_reject_the_rest() {
        assert_eq!(
            parse_rating("Good.\nRating: [[7]]", Scale::default()),
            Ok(7.0)
        );
        assert_eq!(
            parse_rating(
                "Rating: [[2]] ... on reflection Rating: [[ 8.5 ]]",
                Scale::default()
            ),
            Ok(8.5)
        );
        assert!(parse_rating("I'd say 7/10", Scale::default())
            .unwrap_err()
            .contains("no `Rating"));
        assert!(parse_rating("Rating: [[0]]", Scale::FLOW)
            .unwrap_err()
            .contains("outside 1-10"));
        let v = verdict_from_text("j", "Fine answer. Rating: [[11]]", Scale::default());
        assert_eq!(v.rating, None);
        assert_eq!(v.explanation, "Fine answer.");
        assert!(v.error.unwrap().contains("outside"));
    }

    #[test]
    fn jury_averages_valid_ratings_only() {
        let v = |r: Option<f64>| Verdict {
            judge: "j".into(),
            rating: r,
            geval: None,
            explanation: String::new(),
            raw: String::new(),
            error: None,
            context_cut: None,
        };
        assert_eq!(
            jury_score(&[v(Some(6.0)), v(None), v(Some(8.0))]),
            Some(7.0)
        );
        assert_eq!(jury_score(&[v(None)]), None);
    }
}
