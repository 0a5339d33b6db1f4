//! Training data: JSONL records to token batches for LoRA fine-tuning.
//!
//! Three steps, each its own function so the trainer (and tests) can hold the pieces:
//!
//! 1. [`load_records`] reads JSONL in either of two forms, told apart per line: chat
//!    (`{"messages": [{"role": ..., "content": ...}]}`) or prompt/completion
//!    (`{"prompt": ..., "completion": ...}`). A bad line is reported as `FILE:LINE: what`.
//! 2. [`tokenize_records`] renders each record exactly as generation will see it (the model's
//!    chat template; a prompt/completion is a one-turn chat, or plain concatenation when the
//!    model has no template) and marks which tokens are targets: the assistant's content and
//!    the template's end-of-turn token, never the prompt or the assistant header.
//! 3. [`DataLoader`] (in `data/batches.rs`) cuts examples into [`Batch`]es (one example per row, or
//!    several packed per row), shuffled per epoch from a seed, with a [`DataPosition`] to
//!    checkpoint and resume; [`split_holdout`] and [`eval_batches`] serve held-out loss.

use flotilla_engine::chat::ChatMessage;
use flotilla_engine::error::{Error, Result};
use flotilla_engine::loader::LanguageModel;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;

mod batches;

pub use batches::{eval_batches, split_holdout, Batch, DataLoader, DataPosition, PAD_SEGMENT};

/// One training example as written in the JSONL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// 1-based line in the source file, for error messages.
    pub line: usize,
    /// The record's `id`, if it has one.
    pub id: Option<String>,
    pub body: RecordBody,
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordBody {
    /// A conversation; every assistant turn is a target.
    Chat(Vec<ChatMessage>),
    /// A prompt and the completion to learn.
    Completion { prompt: String, completion: String },
}

/// A record as token ids, with the targets marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    pub ids: Vec<u32>,
    /// `loss_mask[i]`: token `i` is a target (an assistant token the model learns to predict).
    pub loss_mask: Vec<bool>,
}

impl TokenizedExample {
    /// How many tokens are targets.
    pub fn target_count(&self) -> usize {
        self.loss_mask.iter().filter(|m| **m).count()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    id: Option<String>,
    messages: Option<Vec<RawMessage>>,
    prompt: Option<String>,
    completion: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    role: String,
    content: String,
}

/// How many bad lines one error message lists before summarising the rest.
const LISTED_ERRORS: usize = 5;

/// Read a training JSONL file (chat and prompt/completion lines may be mixed). Blank lines are
/// skipped. Any bad line fails the whole file, naming up to five `FILE:LINE: what` at once; a
/// file without records is an error too.
pub fn load_records(path: &Path) -> Result<Vec<TrainRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, i + 1) {
            Ok(r) => records.push(r),
            Err(msg) => errors.push(format!("{}:{}: {msg}", path.display(), i + 1)),
        }
    }
    if !errors.is_empty() {
        let mut msg = errors[..errors.len().min(LISTED_ERRORS)].join("; ");
        if errors.len() > LISTED_ERRORS {
            msg.push_str(&format!(
                "; and {} more bad lines",
                errors.len() - LISTED_ERRORS
            ));
        }
        return Err(Error::input(msg));
    }
    if records.is_empty() {
        return Err(Error::input(format!(
            "{}: no training records (the file is empty)",
            path.display()
        )));
    }
    tracing::debug!(path = %path.display(), records = records.len(), "training records read");
    Ok(records)
}

/// One line to a record, or what is wrong with it.
fn parse_line(line: &str, number: usize) -> std::result::Result<TrainRecord, String> {
    let raw: RawLine = serde_json::from_str(line).map_err(|e| {
        format!("not a training record ({e}); expected {{\"messages\": [...]}} or {{\"prompt\": ..., \"completion\": ...}}")
    })?;
    let body = match (raw.messages, raw.prompt, raw.completion) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err("has both `messages` and `prompt`/`completion`; use one form".into())
        }
        (Some(messages), None, None) => RecordBody::Chat(check_messages(messages)?),
        (None, Some(prompt), Some(completion)) => {
            if completion.trim().is_empty() {
                return Err("`completion` is empty: nothing to learn from".into());
            }
            RecordBody::Completion { prompt, completion }
        }
        (None, Some(_), None) => return Err("has `prompt` but no `completion`".into()),
        (None, None, Some(_)) => return Err("has `completion` but no `prompt`".into()),
        (None, None, None) => {
            return Err("expected `messages`, or `prompt` and `completion`".into())
        }
    };
    Ok(TrainRecord {
        line: number,
        id: raw.id,
        body,
    })
}

fn check_messages(raw: Vec<RawMessage>) -> std::result::Result<Vec<ChatMessage>, String> {
    if raw.is_empty() {
        return Err("`messages` is empty".into());
    }
    for (i, m) in raw.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(format!(
                "message {}: role `{}` is not system, user or assistant",
                i + 1,
                m.role
            ));
        }
        if m.role == "assistant" && m.content.trim().is_empty() {
            return Err(format!("message {}: the assistant turn is empty", i + 1));
        }
    }
    match raw.iter().position(|m| m.role == "assistant") {
        None => return Err("no assistant turn: nothing to learn from".into()),
        Some(0) => {
            return Err(
                "message 1 is an assistant turn with no prompt before it; start with a system or user message"
                    .into(),
            )
        }
        Some(_) => {}
    }
    Ok(raw
        .into_iter()
        .map(|m| ChatMessage::new(m.role, m.content))
        .collect())
}

/// Tokenize records for `model`. Each example must fit both `max_len` and the model's context
/// (`model.info.context_length`); one that does not is an error naming its line and length, so
/// a too-long sequence is caught before training starts rather than in the middle of it.
pub fn tokenize_records(
    records: &[TrainRecord],
    model: &LanguageModel,
    max_len: usize,
    path_for_errors: &Path,
) -> Result<Vec<TokenizedExample>> {
    let ctx = model.info.context_length;
    let at = |r: &TrainRecord| format!("{}:{}", path_for_errors.display(), r.line);
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let ex = tokenize_record(r, model).map_err(|e| Error::input(format!("{}: {e}", at(r))))?;
        let n = ex.ids.len();
        if n > max_len {
            return Err(Error::input(format!(
                "{}: the example has {n} tokens, longer than the maximum sequence length {max_len}",
                at(r)
            )));
        }
        if ctx > 0 && n > ctx {
            return Err(Error::input(format!(
                "{}: the example has {n} tokens, longer than the model's context ({ctx} tokens)",
                at(r)
            )));
        }
        // The first token is never a target (nothing precedes it), so at least one other must be.
        if !ex.loss_mask.iter().skip(1).any(|m| *m) {
            return Err(Error::input(format!(
                "{}: the example has no assistant tokens to learn from",
                at(r)
            )));
        }
        out.push(ex);
    }
    Ok(out)
}

/// One record's ids and loss mask, as generation would see the same conversation.
pub fn tokenize_record(record: &TrainRecord, model: &LanguageModel) -> Result<TokenizedExample> {
    match (&record.body, model.template.is_some()) {
        (RecordBody::Chat(messages), true) => tokenize_chat(messages, model),
        (RecordBody::Completion { prompt, completion }, true) => tokenize_chat(
            &[
                ChatMessage::new("user", prompt.as_str()),
                ChatMessage::new("assistant", completion.as_str()),
            ],
            model,
        ),
        (RecordBody::Completion { prompt, completion }, false) => {
            tokenize_plain(prompt, completion, model)
        }
        (RecordBody::Chat(_), false) => Err(Error::input(
            "a chat record needs the model's chat template, and this model has none; \
             write prompt/completion records instead",
        )),
    }
}

/// Render the whole conversation once and mark, by byte offsets, the tokens that fall in an
/// assistant turn. The turn's span is found by rendering prefixes: the conversation up to the
/// turn with the generation prompt (ends with the assistant header), and up to and including
/// the turn (ends after its end-of-turn markup). Tokens after the first end-of-generation token
/// in a span (e.g. the `\n` after `<|im_end|>`) are not targets: generation stops there.
fn tokenize_chat(messages: &[ChatMessage], model: &LanguageModel) -> Result<TokenizedExample> {
    let full = model.render_chat(messages, false)?;
    let mut spans: Vec<Range<usize>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = model.render_chat(&messages[..i], true)?;
        let through = model.render_chat(&messages[..=i], false)?;
        if !through.starts_with(&before) || !full.starts_with(&through) {
            return Err(Error::input(format!(
                "the chat template does not render message {} as a continuation of the messages \
                 before it, so its tokens cannot be told apart from the prompt's",
                i + 1
            )));
        }
        spans.push(before.len()..through.len());
    }
    let encoding = model
        .tokenizer
        .inner()
        .encode(full.as_str(), false)
        .map_err(|e| Error::input(format!("cannot tokenize the rendered chat: {e}")))?;
    let ids = encoding.get_ids().to_vec();
    let offsets = encoding.get_offsets();
    let mut loss_mask = vec![false; ids.len()];
    for span in &spans {
        for (t, &(start, end)) in offsets.iter().enumerate() {
            // A token that straddles the header/content seam is still needed to write the
            // content, so any overlap with the span counts.
            if start < span.end && end > span.start {
                loss_mask[t] = true;
                if model.tokenizer.eos_ids.contains(&ids[t]) {
                    break;
                }
            }
        }
    }
    Ok(TokenizedExample { ids, loss_mask })
}

/// No chat template: the prompt as raw text (with the BOS the tokenizer config adds), then the
/// completion, then the EOS token; the completion and the EOS are the targets. The two parts
/// are tokenized separately, as generation sees the prompt's ids and then produces the rest.
fn tokenize_plain(
    prompt: &str,
    completion: &str,
    model: &LanguageModel,
) -> Result<TokenizedExample> {
    let tk = &model.tokenizer;
    let mut ids = tk.encode(prompt, true)?;
    let prompt_len = ids.len();
    ids.extend(tk.encode(completion, false)?);
    let eos = tk
        .eos_token
        .as_deref()
        .and_then(|t| tk.token_to_id(t))
        .or_else(|| tk.eos_ids.first().copied());
    match eos {
        Some(id) => ids.push(id),
        None => tracing::warn!("the tokenizer has no EOS token; examples end without one"),
    }
    let mut loss_mask = vec![false; ids.len()];
    loss_mask[prompt_len..].iter_mut().for_each(|m| *m = true);
    Ok(TokenizedExample { ids, loss_mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("flotilla-train-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(name: &str, text: &str) -> String {
        load_records(&write(name, text)).unwrap_err().to_string()
    }

    #[test]
    fn reads_both_forms_and_skips_blank_lines() {
        let p = write(
            "ok.jsonl",
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}

{"id": "q2", "prompt": "2 + 2 =", "completion": " 4"}
"#,
        );
        let r = load_records(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].line, 1);
        assert!(
            matches!(&r[0].body, RecordBody::Chat(m) if m.len() == 3 && m[2].content == "Hello.")
        );
        assert_eq!(r[1].line, 3);
        assert_eq!(r[1].id.as_deref(), Some("q2"));
        assert_eq!(
            r[1].body,
            RecordBody::Completion {
                prompt: "2 + 2 =".into(),
                completion: " 4".into()
            }
        );
    }

    #[test]
    fn bad_lines_are_named_with_file_and_line() {
        let e = err(
            "bad.jsonl",
            "{\"prompt\": \"a\", \"completion\": \"b\"}\nnot json\n{\"prompt\": \"a\"}\n",
        );
        assert!(e.contains("bad.jsonl:2: not a training record"), "{e}");
        assert!(
            e.contains("bad.jsonl:3: has `prompt` but no `completion`"),
            "{e}"
        );

        let e = err("typo.jsonl", r#"{"mesages": []}"#);
        assert!(
            e.contains("typo.jsonl:1:") && e.contains("unknown field `mesages`"),
            "{e}"
        );

        let e = err(
            "role.jsonl",
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}"#,
        );
        assert!(e.contains("role.jsonl:1: message 2: role `bot`"), "{e}");

        let e = err(
            "both.jsonl",
            r#"{"messages": [], "prompt": "a", "completion": "b"}"#,
        );
        assert!(e.contains("both `messages` and `prompt`"), "{e}");

        let many = "x\n".repeat(8);
        let e = err("many.jsonl", &many);
        assert!(
            e.contains("many.jsonl:5:") && e.contains("and 3 more bad lines"),
            "{e}"
        );
    }

    #[test]
    fn a_record_without_an_assistant_turn_is_an_error() {
        let e = err(
            "noasst.jsonl",
            r#"{"messages": [{"role": "user", "content": "Hi"}]}"#,
        );
        assert!(e.contains("noasst.jsonl:1: no assistant turn"), "{e}");
        let e = err(
            "first.jsonl",
            r#"{"messages": [{"role": "assistant", "content": "Hi"}]}"#,
        );
        assert!(
            e.contains("first.jsonl:1: message 1 is an assistant turn"),
            "{e}"
        );
        let e = err(
            "empty-completion.jsonl",
            r#"{"prompt": "Hi", "completion": " "}"#,
        );
        assert!(e.contains("`completion` is empty"), "{e}");
    }

    #[test]
    fn an_empty_file_is_an_error() {
        let e = err("empty.jsonl", "\n  \n");
        assert!(e.contains("empty.jsonl: no training records"), "{e}");
        let missing = std::env::temp_dir().join("flotilla-no-such-train.jsonl");
        let e = load_records(&missing).unwrap_err().to_string();
        assert!(e.contains("flotilla-no-such-train.jsonl"), "{e}");
    }
}
