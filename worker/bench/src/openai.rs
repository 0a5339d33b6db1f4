//! A judge behind any OpenAI-compatible chat endpoint (`/v1/chat/completions`): base URL,
//! model name, API key from an environment variable; per-request timeout; retries with
//! exponential backoff on 429 and 5xx and on connection failures. When the endpoint stays
//! down, the case's verdict records the failure (no rating) and the run goes on.

use super::judge::{
    judge_messages, verdict_from_text, JudgeInput, Scale, Verdict, ENDPOINT_CONTEXT_CHARS,
};
use flotilla_engine::chat::ChatMessage;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EndpointJudge {
    pub name: String,
    /// e.g. `http://127.0.0.1:8080/v1`
    pub base_url: String,
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token), if any.
    pub api_key_env: Option<String>,
    pub scale: Scale,
    pub timeout: Duration,
    pub retries: u32,
    pub max_tokens: usize,
}

impl EndpointJudge {
    /// A judge at `base_url` asking for `model`, named `openai:MODEL@BASE_URL` (the name
    /// [`flotilla_contract::JudgeSpec`] prints); the API key comes from
    /// `FLOTILLA_JUDGE_API_KEY`.
    pub fn new(model: &str, base_url: &str, scale: Scale, max_tokens: usize) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        Self {
            name: format!("openai:{model}@{base_url}"),
            base_url,
            model: model.to_string(),
            api_key_env: Some("FLOTILLA_JUDGE_API_KEY".into()),
            scale,
            timeout: Duration::from_secs(120),
            retries: 3,
            max_tokens,
        }
    }

    /// Ask the endpoint; a verdict always comes back (with `error` set on failure).
    pub fn judge(&self, input: &JudgeInput) -> Verdict {
        let asked = judge_messages(input, self.scale, ENDPOINT_CONTEXT_CHARS)
            .and_then(|(messages, cut)| self.ask(&messages).map(|text| (text, cut)));
        match asked {
            Ok((text, cut)) => {
                let mut verdict = verdict_from_text(&self.name, &text, self.scale);
                verdict.context_cut = cut;
                verdict
            }
            Err(e) => Verdict {
                judge: self.name.clone(),
                rating: None,
                geval: None,
                explanation: String::new(),
                raw: String::new(),
                error: Some(e),
                context_cut: None,
            },
        }
    }

    /// The endpoint's reply to `messages`.
    pub fn ask(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens + 16,
            "temperature": 0.0,
        });
        let v = post_chat(
            &self.base_url,
            &body,
            self.api_key_env.as_deref(),
            self.timeout,
            self.retries,
        )?;
        reply_text(&v, &self.base_url)
    }
}

/// `choices[0].message.content` of a chat completion.
pub(crate) fn reply_text(v: &serde_json::Value, base_url: &str) -> Result<String, String> {
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("endpoint {base_url}: reply has no choices[0].message.content"))
}

/// POST `body` to `BASE_URL/chat/completions` and return the reply's JSON, retrying with
/// exponential backoff on 429, 5xx and connection failures; the API key (if the variable
/// `key_env` is set) goes as a bearer token. An error says what the endpoint answered.
pub(crate) fn post_chat(
    base_url: &str,
    body: &serde_json::Value,
    key_env: Option<&str>,
    timeout: Duration,
    retries: u32,
) -> Result<serde_json::Value, String> {
    let url = format!("{base_url}/chat/completions");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let key = key_env.and_then(|v| std::env::var(v).ok());
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            std::thread::sleep(delay);
            delay *= 2;
        }
        let mut req = agent.post(&url).header("content-type", "application/json");
        if let Some(k) = &key {
            req = req.header("authorization", &format!("Bearer {k}"));
        }
        match req.send_json(body) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                let said = || text.chars().take(200).collect::<String>();
                if status == 429 || status >= 500 {
                    last = format!("endpoint {url} answered {status}: {}", said());
                    continue;
                }
                if status >= 400 {
                    return Err(format!("endpoint {url} answered {status}: {}", said()));
                }
                return serde_json::from_str(&text)
                    .map_err(|e| format!("endpoint {url}: reply is not JSON: {e}"));
            }
            Err(e) => last = format!("endpoint {url} unreachable: {e}"),
        }
    }
    Err(format!("{last} (after {retries} retries)"))
}
