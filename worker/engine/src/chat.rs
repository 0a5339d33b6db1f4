//! Chat templates: the Jinja text a model ships (in `tokenizer_config.json` or GGUF
//! `tokenizer.chat_template`) rendered with minijinja, with the helpers real templates use
//! (`raise_exception`, `tojson`, Python string methods, loop controls).
//!
//! Thinking models (Qwen3) write a `<think>...</think>` block before their answer unless their
//! template is rendered with `enable_thinking = false`; [`ChatTemplate::render_with`] sets that
//! variable and [`strip_thinking`] takes the block off an answer.

use crate::error::{Error, Result};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special-token texts it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compile `source`. Fails with the template error if the Jinja does not parse.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        // Templates use Python's str/bool/len conventions; keep whitespace as written.
        env.set_trim_blocks(false);
        env.set_lstrip_blocks(false);
        env.set_keep_trailing_newline(true);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// The template text as the model ships it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render a conversation. `add_generation_prompt` appends the assistant turn's opening.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, None)
    }

    /// [`render`](Self::render) with the template's `enable_thinking` variable defined as given
    /// (Qwen3's switch: `false` renders an empty think block so the model answers directly), or
    /// left undefined (the template's default) with `None`.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::input("a chat needs at least one message"));
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let ctx = match enable_thinking {
            Some(on) => minijinja::context! { enable_thinking => on, ..ctx },
            None => ctx,
        };
        tmpl.render(ctx).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Error::Template(msg)
        })
    }
}

/// An answer without the thinking a reasoning model wrote before it: the text after the first
/// `</think>` (the template may have opened the block itself), leading whitespace dropped. An
/// answer that opens `<think>` and never closes it (the token budget ran out) is all thinking,
/// so nothing is left. Text without a think block is returned as it is.
pub fn strip_thinking(text: &str) -> &str {
    match text.find("</think>") {
        Some(end) => text[end + "</think>".len()..].trim_start(),
        None if text.trim_start().starts_with("<think>") => "",
        None => text,
    }
}

/// Build the message list for a one-shot chat: an optional system prompt, then the user text.
pub fn single_turn(system: Option<&str>, user: &str) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(ChatMessage::new("system", s));
    }
    messages.push(ChatMessage::new("user", user));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_loops_system_prompt_and_generation_prompt() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[S]{{ m['content'] | trim }}{% else %}[{{ m.role | upper }}]{{ m.content.strip() }}{% endif %}{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}",
            Some("<s>"),
            Some("</s>"),
        )
        .unwrap();
        let out = t
            .render(&single_turn(Some(" be brief "), " hi "), true)
            .unwrap();
        assert_eq!(out, "<s>[S]be brief[USER]hi[ASSISTANT]");
        let out = t.render(&single_turn(None, "hi"), false).unwrap();
        assert_eq!(out, "<s>[USER]hi");
    }

    #[test]
    fn raise_exception_and_tojson_work_as_in_transformers() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}{{ messages | tojson }}",
            None,
            None,
        )
        .unwrap();
        let err = t
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Conversation must start with user"),
            "{err}"
        );
        let out = t
            .render(&[ChatMessage::new("user", "a\"b")], false)
            .unwrap();
        assert!(out.contains(r#""content":"a\"b""#), "{out}");
    }

    /// Qwen3's switch, as its template writes it.
    const THINKING: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}";

    #[test]
    fn enable_thinking_is_undefined_unless_set() {
        let t = ChatTemplate::new(THINKING, None, None).unwrap();
        let chat = single_turn(None, "hi");
        let default = t.render(&chat, true).unwrap();
        assert!(default.ends_with("assistant\n"), "{default:?}");
        let on = t.render_with(&chat, true, Some(true)).unwrap();
        assert_eq!(on, default);
        let off = t.render_with(&chat, true, Some(false)).unwrap();
        assert!(off.ends_with("<think>\n\n</think>\n\n"), "{off:?}");
    }

    #[test]
    fn thinking_is_stripped_from_answers() {
        assert_eq!(strip_thinking("<think>\n2 + 2 is 4\n</think>\n\n4"), "4");
        assert_eq!(strip_thinking("so 4.\n</think>\n4"), "4");
        assert_eq!(strip_thinking("  <think>still going"), "");
        assert_eq!(strip_thinking("4, no thinking"), "4, no thinking");
    }

    #[test]
    fn bad_template_is_a_clear_error() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("chat template: does not compile"),
            "{err}"
        );
    }
}
