//! `flotilla serve`: an OpenAI-compatible HTTP API (`POST /v1/chat/completions`,
//! `GET /v1/models`) over a local model, so any tool that speaks that API, flotilla's own
//! endpoint judge included, can use it. Requests are answered one at a time (the model owns
//! the CPU); an optional API key is required as a bearer token.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use flotilla_engine::{
    device, logprobs, ChatMessage, LanguageModel, LoadOptions, Prompt, SamplingParams,
};
use serde::Deserialize;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Environment variable holding the API key clients must send (none: no key needed).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Name the model is served under (default: the --model value).
    #[arg(long)]
    pub served_name: Option<String>,
    /// A LoRA adapter (PEFT directory) to serve on the model, unmerged.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

struct AppState {
    model: LanguageModel,
    name: String,
    api_key: Option<String>,
    busy: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<serde_json::Value>,
    /// Return each generated token's log-probability (OpenAI's `logprobs`).
    #[serde(default)]
    logprobs: Option<bool>,
    /// With `logprobs`, the most likely tokens at each position, 0-20.
    #[serde(default)]
    top_logprobs: Option<usize>,
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn api_error(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    (
        status,
        Json(
            serde_json::json!({"error": {"message": message.to_string(), "type": "invalid_request_error"}}),
        ),
    )
}

fn check_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let sent = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if sent == Some(key.as_str()) {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key",
        ))
    }
}

async fn models(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_key(&s, &headers)?;
    Ok(Json(
        serde_json::json!({"object": "list", "data": [{"id": s.name, "object": "model", "owned_by": "flotilla"}]}),
    ))
}

async fn chat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(req): Json<ChatRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_key(&s, &headers)?;
    if let Some(m) = &req.model {
        if m != &s.name {
            return Err(api_error(
                StatusCode::NOT_FOUND,
                format!(
                    "model `{m}` is not served here (this server has `{}`)",
                    s.name
                ),
            ));
        }
    }
    let stop = match req.stop {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(x)) => vec![x],
        Some(serde_json::Value::Array(a)) => a
            .into_iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "`stop` must be a string or a list of strings",
            ))
        }
    };
    let params = SamplingParams {
        temperature: req.temperature.unwrap_or(0.0),
        top_p: req.top_p.unwrap_or(1.0),
        seed: req.seed.unwrap_or(0),
        max_tokens: req.max_completion_tokens.or(req.max_tokens).unwrap_or(256),
        stop,
        ..Default::default()
    };
    let top = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, Some(_)) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "`top_logprobs` needs `logprobs: true`",
            ))
        }
        (false, None) => None,
        (true, k) => {
            let k = k.unwrap_or(0);
            logprobs::check_top(k, "`top_logprobs`")
                .map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
            Some(k)
        }
    };
    let _guard = s.busy.lock().await;
    let state = s.clone();
    let messages = req.messages;
    let result = tokio::task::spawn_blocking(move || {
        let prompt = [Prompt::Chat(messages)];
        match top {
            Some(k) => state.model.generate_with_logprobs(&prompt, &params, k),
            None => state.model.generate(&prompt, &params),
        }
    })
    .await
    .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let (completions, _) = result.map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
    let c = &completions[0];
    let finish = match c.finish_reason {
        flotilla_engine::FinishReason::Length => "length",
        _ => "stop",
    };
    // OpenAI's shape: {"content": [{token, logprob, top_logprobs: [...]}]}, null when not asked.
    let logprobs_content = c.logprobs.as_ref().map(|lps| {
        let content: Vec<serde_json::Value> = lps
            .iter()
            .map(|t| crate::generate::logprob_json(&s.model, t))
            .collect();
        serde_json::json!({ "content": content })
    });
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Json(serde_json::json!({
        "id": format!("chatcmpl-{created}"),
        "object": "chat.completion",
        "created": created,
        "model": s.name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                     "logprobs": logprobs_content, "finish_reason": finish}],
        "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                  "total_tokens": c.prompt_tokens + c.completion_tokens},
    })))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    use anyhow::Context;
    let device = device::parse_device(&a.device)?;
    let mut model = LanguageModel::load(&a.model, &LoadOptions::on(device))
        .with_context(|| format!("--model {}", a.model))?;
    if let Some(dir) = &a.adapter {
        model = flotilla_train::load_with_adapter(&model, dir)
            .with_context(|| format!("--adapter {}", dir.display()))?;
    }
    let api_key = match &a.api_key_env {
        Some(var) => Some(
            std::env::var(var)
                .with_context(|| format!("--api-key-env {var}: the variable is not set"))?,
        ),
        None => None,
    };
    let state = Arc::new(AppState {
        model,
        name: a.served_name.clone().unwrap_or_else(|| a.model.clone()),
        api_key,
        busy: tokio::sync::Mutex::new(()),
    });
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", a.listen))?;
        let addr = listener.local_addr()?;
        // One line on stdout with the address, so scripts (and tests) can use port 0.
        println!("listening on http://{addr}/v1");
        use std::io::Write;
        std::io::stdout().flush().ok();
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("server failed")
    })
}
