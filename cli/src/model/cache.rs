//! What is in the model cache (`$FLOTILLA_HOME/models`, default `~/.cache/flotilla/models`):
//! the demo aliases and whether each is fetched, and every other GGUF file or Hugging Face
//! folder there, with its size. And which kind of model a folder holds: an embedding model
//! (a BERT-family encoder, such as the `minilm` demo) or a language model.

use flotilla_contract::model_ref::{model_cache, DEMO_ALIASES};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One model in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct CachedModel {
    /// What `--model` takes for it: the demo alias, or the path.
    pub name: String,
    /// The demo alias, for the demo models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub path: PathBuf,
    /// Whether its files are there (a demo alias may not be fetched yet).
    pub fetched: bool,
    /// `gguf` or `hf` (a Hugging Face folder).
    pub format: &'static str,
    /// `language` or `embedding`.
    pub kind: &'static str,
    /// Bytes on disk (every file of a folder); null when not fetched.
    pub size_bytes: Option<u64>,
}

/// The model families `flotilla embed` and retrieval load (sentence-transformers encoders).
pub const EMBEDDING_TYPES: &[&str] = &["bert", "roberta", "xlm-roberta"];

/// The `model_type` of a Hugging Face folder's `config.json`, if it has one.
pub fn hf_model_type(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("model_type")?.as_str().map(str::to_string)
}

/// Whether a Hugging Face folder holds an embedding model.
pub fn is_embedding_dir(dir: &Path) -> bool {
    hf_model_type(dir).is_some_and(|t| EMBEDDING_TYPES.contains(&t.as_str()))
}

fn size_of(path: &Path) -> u64 {
    if path.is_file() {
        return path.metadata().map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

fn describe(path: &Path) -> Option<(&'static str, &'static str)> {
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return None;
        }
        let kind = if is_embedding_dir(path) {
            "embedding"
        } else {
            "language"
        };
        return Some(("hf", kind));
    }
    let is_gguf = path.extension().is_some_and(|x| x == "gguf");
    is_gguf.then_some(("gguf", "language"))
}

/// The demo aliases (fetched or not), then every other model in `cache`, by name.
pub fn list(cache: &Path) -> Vec<CachedModel> {
    let mut out = Vec::new();
    for (alias, file) in DEMO_ALIASES {
        let path = cache.join(file);
        let fetched = path.exists();
        let (format, kind) = describe(&path).unwrap_or(match *alias {
            "minilm" | "e5" => ("hf", "embedding"),
            _ => ("gguf", "language"),
        });
        out.push(CachedModel {
            name: alias.to_string(),
            alias: Some(alias.to_string()),
            size_bytes: fetched.then(|| size_of(&path)),
            path,
            fetched,
            format,
            kind,
        });
    }
    let mut others: Vec<CachedModel> = std::fs::read_dir(cache)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    !DEMO_ALIASES
                        .iter()
                        .any(|(_, f)| p.file_name().is_some_and(|n| n == *f))
                })
                .filter_map(|p| {
                    let (format, kind) = describe(&p)?;
                    Some(CachedModel {
                        name: p.display().to_string(),
                        alias: None,
                        size_bytes: Some(size_of(&p)),
                        fetched: true,
                        path: p,
                        format,
                        kind,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(others);
    out
}

/// The model cache of this machine.
pub fn cache_dir() -> PathBuf {
    model_cache()
}

/// Bytes for people: `94.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(98_362_432), "93.8 MiB");
    }
}
