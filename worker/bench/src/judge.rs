//! Judges: a rubric prompt that asks for an explanation and then `Rating: [[N]]`.
//!
//! A local judge never fails to parse: it writes its explanation freely, then flotilla writes
//! `Rating: [[` itself and scores every rating in the scale as a continuation, so the rating
//! is the most likely valid one, and the G-Eval score (the probability-weighted mean rating)
//! comes from the same pass. A remote judge's text is parsed; an invalid rating is recorded
//! with the raw text, never dropped.

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
    /// An answer against a reference answer.
    Reference {
        question: &'a str,
        reference: &'a str,
        answer: &'a str,
    },
    /// A text against a rubric (Flow's criteria cases).
    Criteria { text: &'a str, rubric: &'a str },
}

/// The messages of the judge prompt.
pub fn judge_messages(input: &JudgeInput, scale: Scale) -> Vec<ChatMessage> {
    let system = format!(
        "You are an impartial judge. Assess the response below, explain your assessment in two or \
         three sentences, and then give a rating from {} (worst) to {} (best) in exactly this \
         format: \"Rating: [[N]]\", where N is the whole number you give.",
        scale.min, scale.max
    );
    // No example value: a small judge copies one (issue 11: 44 of 48 quickstart ratings were
    // the example's 5).
    let user = match input {
        JudgeInput::Reference { question, reference, answer } => format!(
            "Rate how correct and complete the answer is compared with the reference answer. \
             Penalise invented facts.\n\n[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n\
             [Answer]\n{answer}"
        ),
        JudgeInput::Criteria { text, rubric } => format!(
            "Rate how well the text meets the criterion.\n\n[Criterion]\n{rubric}\n\n[Text]\n{text}"
        ),
    };
    vec![
        ChatMessage::new("system", system),
        ChatMessage::new("user", user),
    ]
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
        let lm = self.model;
        let messages = judge_messages(input, self.scale);
        let prompt = lm.render_chat(&messages, true)?;
        let prompt_ids = lm.tokenizer.encode(&prompt, false)?;
        let params = SamplingParams {
            max_tokens: self.explanation_tokens,
            stop: vec!["Rating:".into(), "[[".into()],
            ..Default::default()
        };
        let (out, _) = lm.generate_ids(std::slice::from_ref(&prompt_ids), &params)?;
        let explanation = out[0].text.trim().to_string();
        // flotilla writes the rating's opening; the model only chooses the number.
        let forced = format!("{prompt}{explanation}\nRating: [[");
        let forced_ids = lm.tokenizer.encode(&forced, false)?;
        let ratings: Vec<u32> = (self.scale.min..=self.scale.max).collect();
        let candidates = ratings
            .iter()
            .map(|r| self.continuation_ids(&forced, &forced_ids, &format!("{r}]]")))
            .collect::<Result<Vec<_>>>()?;
        let logp = lm.continuation_logprobs(&forced_ids, &candidates)?;
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
        })
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
        },
        Err(e) => Verdict {
            judge: judge.into(),
            rating: None,
            geval: None,
            explanation,
            raw: reply.into(),
            error: Some(e.0),
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
                question: "q",
                reference: "r",
                answer: "a",
            },
            JudgeInput::Criteria {
                text: "t",
                rubric: "c",
            },
        ] {
            for m in judge_messages(&input, Scale { min: 1, max: 10 }) {
                assert!(!example.is_match(&m.content), "{}", m.content);
            }
        }
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
        };
        assert_eq!(
            jury_score(&[v(Some(6.0)), v(None), v(Some(8.0))]),
            Some(7.0)
        );
        assert_eq!(jury_score(&[v(None)]), None);
    }
}
