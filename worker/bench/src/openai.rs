//! A judge behind any OpenAI-compatible chat endpoint (`/v1/chat/completions`): base URL,
//! model name, API key from an environment variable; per-request timeout; retries with
//! exponential backoff on 429 and 5xx and on connection failures. When the endpoint stays
//! down, the case's verdict records the failure (no rating) and the run goes on.

use super::judge::{judge_messages, verdict_from_text, JudgeInput, Scale, Verdict};
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
        match self.complete(input) {
            Ok(text) => verdict_from_text(&self.name, &text, self.scale),
            Err(e) => Verdict {
                judge: self.name.clone(),
                rating: None,
                geval: None,
                explanation: String::new(),
                raw: String::new(),
                error: Some(e),
            },
        }
    }

    fn complete(&self, input: &JudgeInput) -> Result<String, String> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": judge_messages(input, self.scale),
            "max_tokens": self.max_tokens + 16,
            "temperature": 0.0,
        });
        let url = format!("{}/chat/completions", self.base_url);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let key = self
            .api_key_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok());
        let mut delay = Duration::from_millis(250);
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay *= 2;
            }
            let mut req = agent.post(&url).header("content-type", "application/json");
            if let Some(k) = &key {
                req = req.header("authorization", &format!("Bearer {k}"));
            }
            match req.send_json(&body) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    if status == 429 || status >= 500 {
                        last = format!(
                            "judge endpoint {url} answered {status}: {}",
                            text.chars().take(200).collect::<String>()
                        );
                        continue;
                    }
                    if status >= 400 {
                        return Err(format!(
                            "judge endpoint {url} answered {status}: {}",
                            text.chars().take(200).collect::<String>()
                        ));
                    }
                    let v: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| format!("judge endpoint {url}: reply is not JSON: {e}"))?;
                    return v["choices"][0]["message"]["content"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| {
                            format!("judge endpoint {url}: reply has no choices[0].message.content")
                        });
                }
                Err(e) => last = format!("judge endpoint {url} unreachable: {e}"),
            }
        }
        Err(format!("{last} (after {} retries)", self.retries))
    }
}
