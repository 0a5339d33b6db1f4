//! Prompt variants, each a sweep axis: where the question goes relative to the documents,
//! a DSPy-style structured prompt whose output is parsed back into fields, and a user's own
//! Jinja template. Every variant yields chat messages that the model's chat template renders.

use crate::judge::ReplyError;
pub use flotilla_contract::variant::Variant;
use flotilla_engine::chat::ChatMessage;
use flotilla_engine::error::{Error, Result};
use serde::Serialize;

/// What a prompt is built from.
#[derive(Debug, Clone, Serialize)]
pub struct PromptInputs<'a> {
    pub question: &'a str,
    /// The document text or retrieved passages, already joined.
    pub context: &'a str,
    pub language: &'a str,
}

/// A rendered prompt: messages for the chat template, plus text flotilla writes at the start
/// of the assistant's turn (constrained variants), and stop strings.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltPrompt {
    pub messages: Vec<ChatMessage>,
    pub assistant_prefix: Option<String>,
    pub stop: Vec<String>,
}

const SYSTEM: &str = "You answer questions using only the provided documents. If the documents \
do not contain the answer, say so. Do not invent facts, numbers or URLs.";
const SYSTEM_JA: &str =
    "提供された文書のみを使って質問に答えてください。文書に答えがない場合はそう述べてください。\
事実、数値、URLを作り出さないでください。";

pub const ANSWER_MARKER: &str = "[[ ## answer ## ]]";
pub const COMPLETED_MARKER: &str = "[[ ## completed ## ]]";

fn structured_system() -> String {
    format!(
        "Your input fields are:\n\
         1. `context` (str): passages from the documents\n\
         2. `question` (str): the question to answer\n\
         Your output fields are:\n\
         1. `answer` (str): a concise answer that uses only facts stated in the context\n\
         All interactions will be structured in the following way, with the appropriate values filled in.\n\n\
         [[ ## context ## ]]\n{{context}}\n\n\
         [[ ## question ## ]]\n{{question}}\n\n\
         {ANSWER_MARKER}\n{{answer}}\n\n\
         {COMPLETED_MARKER}\n\
         In adhering to this structure, your objective is: answer the question using only the context; \
         never invent facts, numbers or URLs."
    )
}

fn structured_user(i: &PromptInputs, strict: bool) -> String {
    let mut s = format!(
        "[[ ## context ## ]]\n{}\n\n[[ ## question ## ]]\n{}\n\n\
         Respond with the corresponding output fields, starting with the field `{ANSWER_MARKER}`, \
         and then ending with the marker for `{COMPLETED_MARKER}`.",
        i.context, i.question
    );
    if strict {
        s.push_str(&format!(
            "\n\nIMPORTANT: your previous reply could not be read. Write exactly `{ANSWER_MARKER}` on \
             its own line, then the answer, then `{COMPLETED_MARKER}`. Nothing else."
        ));
    }
    s
}

/// Build the prompt for `variant`. `strict` is the retry after a structured parse failure.
pub fn build(variant: &Variant, i: &PromptInputs, strict: bool) -> Result<BuiltPrompt> {
    let system = if i.language == "ja" {
        SYSTEM_JA
    } else {
        SYSTEM
    };
    let plain = |user: String| BuiltPrompt {
        messages: vec![
            ChatMessage::new("system", system),
            ChatMessage::new("user", user),
        ],
        assistant_prefix: None,
        stop: Vec::new(),
    };
    Ok(match variant {
        Variant::QueryFirst => plain(format!(
            "Question: {}\n\nDocuments:\n{}\n\nAnswer the question above using the documents.",
            i.question, i.context
        )),
        Variant::QueryLast => plain(format!(
            "Documents:\n{}\n\nQuestion: {}\nAnswer the question using the documents.",
            i.context, i.question
        )),
        Variant::Structured => BuiltPrompt {
            messages: vec![
                ChatMessage::new("system", structured_system()),
                ChatMessage::new("user", structured_user(i, strict)),
            ],
            assistant_prefix: None,
            stop: vec![COMPLETED_MARKER.to_string()],
        },
        Variant::StructuredConstrained => BuiltPrompt {
            messages: vec![
                ChatMessage::new("system", structured_system()),
                ChatMessage::new("user", structured_user(i, false)),
            ],
            assistant_prefix: Some(format!("{ANSWER_MARKER}\n")),
            stop: vec![COMPLETED_MARKER.to_string(), "[[ ##".to_string()],
        },
        Variant::Custom { template } => {
            let source = std::fs::read_to_string(template).map_err(|e| Error::io(template, e))?;
            let mut env = minijinja::Environment::new();
            env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
            env.add_template("custom", &source)
                .map_err(|e| Error::Template(format!("{template}: {e}")))?;
            let text = env
                .get_template("custom")
                .and_then(|t| {
                    t.render(minijinja::context! {
                        question => i.question, context => i.context, language => i.language,
                    })
                })
                .map_err(|e| Error::Template(format!("{template}: {e}")))?;
            plain(text)
        }
    })
}

/// The `answer` field of a structured reply, or why it could not be read.
pub fn parse_structured(reply: &str, prefixed: bool) -> std::result::Result<String, ReplyError> {
    let body = if prefixed {
        reply
    } else {
        match reply.find(ANSWER_MARKER) {
            Some(p) => &reply[p + ANSWER_MARKER.len()..],
            None => {
                return Err(ReplyError(format!(
                    "no `{ANSWER_MARKER}` marker in the reply"
                )))
            }
        }
    };
    let end = [COMPLETED_MARKER, "[[ ##"]
        .iter()
        .filter_map(|m| body.find(m))
        .min()
        .unwrap_or(body.len());
    let answer = body[..end].trim();
    if answer.is_empty() {
        return Err(ReplyError("the `answer` field is empty".into()));
    }
    Ok(answer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> PromptInputs<'static> {
        PromptInputs {
            question: "What do rhinos eat?",
            context: "Rhinos eat grass.",
            language: "en",
        }
    }

    #[test]
    fn query_placement_differs_only_in_order() {
        let first = build(&Variant::QueryFirst, &inputs(), false).unwrap();
        let last = build(&Variant::QueryLast, &inputs(), false).unwrap();
        let (f, l) = (&first.messages[1].content, &last.messages[1].content);
        assert!(f.find("rhinos eat?").unwrap() < f.find("Rhinos eat grass").unwrap());
        assert!(l.find("rhinos eat?").unwrap() > l.find("Rhinos eat grass").unwrap());
    }

    #[test]
    fn structured_replies_parse_or_say_why_not() {
        let reply = "[[ ## answer ## ]]\nGrass and leaves.\n\n[[ ## completed ## ]]";
        assert_eq!(parse_structured(reply, false).unwrap(), "Grass and leaves.");
        assert!(parse_structured("They eat grass.", false)
            .unwrap_err()
            .contains("marker"));
        assert!(parse_structured("[[ ## answer ## ]]\n\n[[ ## completed ## ]]", false).is_err());
        assert_eq!(
            parse_structured("Grass.\n[[ ## completed", true).unwrap(),
            "Grass."
        );
        let strict = build(&Variant::Structured, &inputs(), true).unwrap();
        assert!(strict.messages[1].content.contains("could not be read"));
        let c = build(&Variant::StructuredConstrained, &inputs(), false).unwrap();
        assert_eq!(c.assistant_prefix.as_deref(), Some("[[ ## answer ## ]]\n"));
    }

    #[test]
    fn unknown_variants_and_bad_templates_are_named() {
        let e = Variant::parse("query_middle").unwrap_err().to_string();
        assert!(e.contains("query_middle"), "{e}");
        let e = build(
            &Variant::Custom {
                template: "/no/such.jinja".into(),
            },
            &inputs(),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/no/such.jinja"), "{e}");
    }
}
