//! The model under test behind an OpenAI-compatible chat endpoint: `openai:MODEL@BASE_URL`
//! (Ollama, vLLM, llama.cpp's server, a hosted API, `flotilla serve`), answering benchmark
//! cases beside local models so the big model a team wants to replace sits in the same table.
//!
//! Requests are retried with backoff (429, 5xx, connection failures) and limited per base URL
//! to `FLOTILLA_API_CONCURRENCY` at once in this process (default 4: a worker's slots share
//! it); the reply's `usage` gives the token counts, the wall clock the latency. The API key,
//! if any, comes from `FLOTILLA_API_KEY`.

use super::openai::{post_chat, reply_text};
use flotilla_engine::chat::ChatMessage;
use flotilla_engine::sampling::SamplingParams;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// A chat model behind an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointModel {
    /// `openai:MODEL@BASE_URL`, as the sweep or `--model` wrote it.
    pub spec: String,
    pub model: String,
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
}

/// One reply: its text and the endpoint's token counts (0 when it does not say).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl EndpointModel {
    /// The model named by `spec` when it is `openai:MODEL@BASE_URL`; `None` for any other
    /// spec (a local model).
    pub fn parse(spec: &str) -> Option<Result<EndpointModel, String>> {
        let rest = spec.strip_prefix("openai:")?;
        Some(match rest.split_once('@') {
            Some((model, base)) if !model.is_empty() && !base.is_empty() => Ok(EndpointModel {
                spec: spec.to_string(),
                model: model.to_string(),
                base_url: base.trim_end_matches('/').to_string(),
                api_key_env: Some("FLOTILLA_API_KEY".into()),
                timeout: Duration::from_secs(300),
                retries: 3,
            }),
            _ => Err(format!(
                "model `{spec}`: expected openai:MODEL@BASE_URL, e.g. \
                 openai:llama3.1:70b@http://127.0.0.1:11434/v1"
            )),
        })
    }

    /// Ask for a reply to `messages` with `params` (temperature, top_p, max_tokens, seed) and
    /// `stop` strings.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        params: &SamplingParams,
        stop: &[String],
    ) -> Result<Reply, String> {
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        });
        if !stop.is_empty() {
            body["stop"] = serde_json::json!(stop);
        }
        let _permit = Permit::take(&self.base_url);
        let v = post_chat(
            &self.base_url,
            &body,
            self.api_key_env.as_deref(),
            self.timeout,
            self.retries,
        )?;
        let tokens = |k: &str| v["usage"][k].as_u64().unwrap_or(0) as usize;
        Ok(Reply {
            text: reply_text(&v, &self.base_url)?,
            prompt_tokens: tokens("prompt_tokens"),
            completion_tokens: tokens("completion_tokens"),
        })
    }
}

/// An estimate of a text's tokens for a model whose tokenizer is not here: a token per
/// four ASCII characters, one per other character (CJK text is about a token a character).
pub fn estimate_tokens(text: &str) -> usize {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    let other = text.chars().filter(|c| !c.is_ascii()).count();
    ascii.div_ceil(4) + other
}

/// Requests in flight per base URL.
type Gate = Arc<(Mutex<usize>, Condvar)>;

fn gates() -> &'static Mutex<HashMap<String, Gate>> {
    static GATES: OnceLock<Mutex<HashMap<String, Gate>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

/// The most requests to one endpoint at once from this process.
pub fn concurrency() -> usize {
    std::env::var("FLOTILLA_API_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4)
}

/// A place among an endpoint's concurrent requests, released when dropped.
struct Permit(Gate);

impl Permit {
    fn take(base_url: &str) -> Permit {
        let gate = {
            let mut g = gates().lock().unwrap_or_else(|e| e.into_inner());
            g.entry(base_url.to_string()).or_default().clone()
        };
        let limit = concurrency();
        {
            let (count, freed) = &*gate;
            let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
            while *n >= limit {
                n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
            }
            *n += 1;
        }
        Permit(gate)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let (count, freed) = &*self.0;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_expected() {
        let m = EndpointModel::parse("openai:qwen2.5:7b@http://127.0.0.1:11434/v1/")
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.model.as_str(), m.base_url.as_str()),
            ("qwen2.5:7b", "http://127.0.0.1:11434/v1")
        );
        assert!(EndpointModel::parse("smollm2").is_none());
        let e = EndpointModel::parse("openai:nourl").unwrap().unwrap_err();
        assert!(e.contains("openai:MODEL@BASE_URL"), "{e}");
    }

    #[test]
    fn token_estimates_count_cjk_per_character() {
        assert_eq!(estimate_tokens("abcdefgh"), 2);
        assert_eq!(estimate_tokens("日本語"), 3);
    }

    #[test]
    fn permits_hold_the_limit() {
        let url = "http://gate.test";
        let held: Vec<Permit> = (0..concurrency()).map(|_| Permit::take(url)).collect();
        let gate = gates().lock().unwrap()[url].clone();
        assert_eq!(*gate.0.lock().unwrap(), concurrency());
        drop(held);
        assert_eq!(*gate.0.lock().unwrap(), 0);
    }
}
