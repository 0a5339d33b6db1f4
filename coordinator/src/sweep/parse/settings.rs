//! The settings sections of a sweep: `judge`, `generation`, `retrieval`, `retries`.

use super::*;

/// The jury. Judges that are model paths stay as written here (they are the judges' names in
/// results); [`Sweep::model_spec`] resolves them against the sweep's folder where they load.
pub(super) fn parse_judge(
    r: &mut Reader,
    node: Option<&Node>,
    top_line: usize,
    sweep_dir: &Path,
) -> JudgeEntry {
    let mut judge = JudgeEntry {
        judges: vec!["self".into()],
        scale: Scale::default(),
        explanation_tokens: 96,
        line: node.map(|n| n.line).unwrap_or(top_line),
    };
    let Some(node) = node else { return judge };
    let Some(f) = r.map(node, "judge", &["judges", "scale", "explanation_tokens"]) else {
        return judge;
    };
    if let Some(n) = f.get("judges") {
        if let Some(list) = r.strings(n, "judge.judges") {
            for (j, line) in &list {
                if j != "self" && !j.starts_with("openai:") {
                    if let Err(e) = check::model_syntax_in(j, sweep_dir) {
                        r.error(*line, format!("judge.judges: {e}"));
                    }
                }
            }
            judge.judges = list.into_iter().map(|(j, _)| j).collect();
        }
    }
    if let Some(n) = f.get("scale") {
        match r.string(n, "judge.scale").map(|s| s.parse::<Scale>()) {
            Some(Ok(s)) => judge.scale = s,
            Some(Err(e)) => r.error(n.line, format!("judge.scale: {e}")),
            None => {}
        }
    }
    if let Some(n) = f.get("explanation_tokens") {
        if let Some(t) = r.uint(n, "judge.explanation_tokens") {
            judge.explanation_tokens = t as usize;
        }
    }
    for (j, line) in judge.judges.iter().zip(std::iter::repeat(judge.line)) {
        if j.parse::<flotilla_contract::JudgeSpec>().is_err() {
            r.error(
                line,
                format!("judge.judges: `{j}` is not openai:MODEL@BASE_URL"),
            );
        }
    }
    judge
}

pub(super) fn parse_generation(
    r: &mut Reader,
    node: Option<&Node>,
    seed: u64,
) -> (SamplingParams, Truncation) {
    let mut p = SamplingParams {
        max_tokens: 256,
        seed,
        ..Default::default()
    };
    let mut truncation = Truncation::HeadTail;
    let Some(node) = node else {
        return (p, truncation);
    };
    let keys = [
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "samples",
        "truncation",
        "enable_thinking",
    ];
    let Some(f) = r.map(node, "generation", &keys) else {
        return (p, truncation);
    };
    if let Some(n) = f.get("max_tokens") {
        match r.uint(n, "generation.max_tokens") {
            Some(0) => r.error(n.line, "`generation.max_tokens` must be at least 1"),
            Some(t) => p.max_tokens = t as usize,
            None => {}
        }
    }
    if let Some(n) = f.get("temperature") {
        match r.float(n, "generation.temperature") {
            Some(t) if t < 0.0 => r.error(n.line, "`generation.temperature` must be >= 0"),
            Some(t) => p.temperature = t as f32,
            None => {}
        }
    }
    if let Some(n) = f.get("top_p") {
        match r.float(n, "generation.top_p") {
            Some(t) if !(t > 0.0 && t <= 1.0) => {
                r.error(n.line, "`generation.top_p` must be in (0, 1]")
            }
            Some(t) => p.top_p = t as f32,
            None => {}
        }
    }
    if let Some(n) = f.get("top_k") {
        if let Some(k) = r.uint(n, "generation.top_k") {
            p.top_k = k as usize;
        }
    }
    if let Some(n) = f.get("repetition_penalty") {
        match r.float(n, "generation.repetition_penalty") {
            Some(t) if t <= 0.0 => r.error(n.line, "`generation.repetition_penalty` must be > 0"),
            Some(t) => p.repetition_penalty = t as f32,
            None => {}
        }
    }
    if let Some(n) = f.get("samples") {
        match r.uint(n, "generation.samples") {
            Some(0) => r.error(n.line, "`generation.samples` must be at least 1"),
            Some(k) if k > 1 && p.temperature == 0.0 => r.error(
                n.line,
                format!(
                    "`generation.samples: {k}` needs `generation.temperature` above 0: greedy \
                     decoding gives the same answer every time"
                ),
            ),
            Some(k) => p.samples = k as usize,
            None => {}
        }
    }
    if let Some(n) = f.get("enable_thinking") {
        match &n.value {
            crate::sweep::yaml::Value::Bool(b) => p.enable_thinking = Some(*b),
            other => r.error(
                n.line,
                format!(
                    "`generation.enable_thinking` must be true or false, found {}",
                    other.kind()
                ),
            ),
        }
    }
    if let Some(n) = f.get("truncation") {
        if let Some(s) = r.string(n, "generation.truncation") {
            match Truncation::parse(&s) {
                Ok(t) => truncation = t,
                Err(_) => r.error(
                    n.line,
                    format!("generation.truncation: `{s}` is not head or head_tail"),
                ),
            }
        }
    }
    (p, truncation)
}

pub(super) fn parse_retrieval(r: &mut Reader, node: Option<&Node>) -> RetrievalSettings {
    let mut s = RetrievalSettings {
        embedder: "minilm".into(),
        top_k: 4,
        chunks: ChunkSettings::default(),
    };
    let Some(node) = node else { return s };
    let Some(f) = r.map(
        node,
        "retrieval",
        &[
            "embedder",
            "mode",
            "top_k",
            "chunk_size",
            "chunk_overlap",
            "context_tokens",
        ],
    ) else {
        return s;
    };
    if let Some(n) = f.get("embedder") {
        if let Some(e) = r.string(n, "retrieval.embedder") {
            if let Err(err) = check::model_syntax(&e) {
                r.error(n.line, format!("retrieval.embedder: {err}"));
            }
            s.embedder = e;
        }
    }
    if let Some(n) = f.get("mode") {
        if let Some(m) = r.string(n, "retrieval.mode") {
            match flotilla_contract::RetrievalMode::parse(&m) {
                Ok(m) => s.chunks.mode = m,
                Err(_) => r.error(
                    n.line,
                    format!("retrieval.mode: `{m}` is not hybrid, dense or bm25"),
                ),
            }
        }
    }
    if let Some(n) = f.get("context_tokens") {
        match r.uint(n, "retrieval.context_tokens") {
            Some(0) => r.error(n.line, "`retrieval.context_tokens` must be at least 1"),
            Some(k) => s.chunks.context_tokens = k as usize,
            None => {}
        }
    }
    if let Some(n) = f.get("top_k") {
        match r.uint(n, "retrieval.top_k") {
            Some(0) => r.error(n.line, "`retrieval.top_k` must be at least 1"),
            Some(k) => s.top_k = k as usize,
            None => {}
        }
    }
    if let Some(n) = f.get("chunk_size") {
        match r.uint(n, "retrieval.chunk_size") {
            Some(0) => r.error(n.line, "`retrieval.chunk_size` must be at least 1"),
            Some(k) => s.chunks.size = k as usize,
            None => {}
        }
    }
    if let Some(n) = f.get("chunk_overlap") {
        if let Some(k) = r.uint(n, "retrieval.chunk_overlap") {
            s.chunks.overlap = k as usize;
            if s.chunks.overlap >= s.chunks.size {
                r.error(
                    n.line,
                    "`retrieval.chunk_overlap` must be smaller than `retrieval.chunk_size`",
                );
            }
        }
    }
    s
}

pub(super) fn parse_retries(r: &mut Reader, node: Option<&Node>) -> Retries {
    let mut out = Retries::default();
    let Some(node) = node else { return out };
    let Some(f) = r.map(node, "retries", &["task", "infrastructure"]) else {
        return out;
    };
    if let Some(n) = f.get("task") {
        if let Some(v) = r.uint(n, "retries.task") {
            out.task = v.min(1000) as u32;
        }
    }
    if let Some(n) = f.get("infrastructure") {
        if let Some(v) = r.uint(n, "retries.infrastructure") {
            out.infrastructure = v.min(1000) as u32;
        }
    }
    out
}
