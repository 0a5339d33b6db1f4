//! Models kept loaded between shards, least recently used first out.
//!
//! Loading a 7B model takes longer than many shards take to run, so a worker keeps the last
//! few it used: language models keyed by model spec and adapter (an adapter rides on the
//! shared base weights, so base and adapted entries cost little more than the base), and the
//! embedding model used for retrieval. The coordinator is told which models are loaded, and
//! prefers to send a shard to a worker that has its model.

use flotilla_contract::model_ref::model_cache;
use flotilla_engine::embed::EmbeddingModel;
use flotilla_engine::error::Result;
use flotilla_engine::loader::{LanguageModel, LoadOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A model path from the submitter's machine, as this worker can load it: the path itself when
/// it exists here, else the file or folder of the same name in this worker's model cache (so
/// a sweep naming `/home/ana/models/qwen.gguf` runs on a PC that keeps `qwen.gguf` in its
/// cache; the result's provenance records the sha256 of what was loaded). Demo aliases, `hf:`
/// ids and anything not found stay as they are, for the loader's own error.
pub fn here(spec: &str, cache: &Path) -> String {
    let path = Path::new(spec);
    let looks_like_path = spec.contains('/') || spec.contains('\\') || spec.ends_with(".gguf");
    if spec.starts_with("hf:") || !looks_like_path || path.exists() {
        return spec.to_string();
    }
    match path.file_name().map(|n| cache.join(n)) {
        Some(p) if p.exists() => p.to_string_lossy().into_owned(),
        _ => spec.to_string(),
    }
}

/// An adapter to put on a model: its identity (a hash of its files) and its local folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterKey {
    pub id: String,
    pub dir: std::path::PathBuf,
}

#[derive(Clone)]
enum Loaded {
    Language(Arc<LanguageModel>),
    Embedding(Arc<EmbeddingModel>),
}

struct Entry {
    /// `lm:` + model spec (+ `\0` + adapter id for an adapted model), or `embed:` + spec for
    /// an embedding model: the prefixes keep the two kinds apart whatever the specs say.
    key: String,
    spec: String,
    model: Loaded,
}

/// Loaded models, shared by the shards of a worker (and by the in-process workers of
/// `flotilla run`).
pub struct ModelCache {
    options: LoadOptions,
    capacity: usize,
    /// Most recently used last.
    entries: Mutex<Vec<Entry>>,
    /// The distributed training run this worker last took part in (model and tokenized
    /// data), kept for its next round.
    rounds: Mutex<Option<flotilla_train::rounds::RoundTrainer>>,
    /// Where specs that name no local file load from: a pushed model (`coordinator:NAME`)
    /// laid out by the shard that brought it.
    locals: Mutex<std::collections::HashMap<String, String>>,
}

impl ModelCache {
    /// A cache holding at most `capacity` models (at least 1), loaded with `options`.
    pub fn new(options: LoadOptions, capacity: usize) -> Self {
        Self {
            options,
            capacity: capacity.max(1),
            entries: Mutex::new(Vec::new()),
            rounds: Mutex::new(None),
            locals: Mutex::new(Default::default()),
        }
    }

    /// Load `spec` from `local` from now on (a pushed model's folder on this disk).
    pub fn set_local(&self, spec: &str, local: &str) {
        self.locals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.to_string(), local.to_string());
    }

    /// Where `spec` loads from: its pushed model's place, a demo alias's file, or itself.
    pub fn local(&self, spec: &str) -> String {
        match self
            .locals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(spec)
        {
            Some(l) => l.clone(),
            None => here(spec, &model_cache()),
        }
    }

    /// The kept round trainer (one run at a time; a shard of another run replaces it).
    pub fn round_trainer(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<flotilla_train::rounds::RoundTrainer>> {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_load(
        &self,
        key: String,
        spec: &str,
        load: impl FnOnce(&Self) -> Result<Loaded>,
    ) -> Result<Loaded> {
        // Loading happens under the lock: two shards wanting the same model must not load it
        // twice, and loads are rare next to the work they serve.
        let mut entries = self.entries.lock().expect("model cache");
        if let Some(i) = entries.iter().position(|e| e.key == key) {
            let e = entries.remove(i);
            let model = e.model.clone();
            entries.push(e);
            return Ok(model);
        }
        let model = load(self)?;
        entries.push(Entry {
            key,
            spec: spec.to_string(),
            model: model.clone(),
        });
        while entries.len() > self.capacity {
            let gone = entries.remove(0);
            tracing::info!(model = gone.spec, "unloading model (least recently used)");
        }
        Ok(model)
    }

    /// The language model `spec`, with `adapter` applied when given.
    pub fn language(&self, spec: &str, adapter: Option<&AdapterKey>) -> Result<Arc<LanguageModel>> {
        // Keyed by where it loads from: a pushed model pushed again is another model.
        let local = self.local(spec);
        let base = || -> Result<Arc<LanguageModel>> {
            match self.get_or_load(format!("lm:{local}"), spec, |c| {
                tracing::info!(model = spec, local = %local, "loading model");
                Ok(Loaded::Language(Arc::new(LanguageModel::load(
                    &local, &c.options,
                )?)))
            })? {
                Loaded::Language(m) => Ok(m),
                Loaded::Embedding(_) => unreachable!("language keys hold language models"),
            }
        };
        let Some(adapter) = adapter else {
            return base();
        };
        let base = base()?;
        let key = format!("lm:{local}\0{}", adapter.id);
        match self.get_or_load(key, spec, |_| {
            tracing::info!(model = spec, adapter = %adapter.dir.display(), "applying adapter");
            Ok(Loaded::Language(Arc::new(apply_adapter(
                &base,
                &adapter.dir,
            )?)))
        })? {
            Loaded::Language(m) => Ok(m),
            Loaded::Embedding(_) => unreachable!("language keys hold language models"),
        }
    }

    /// The embedding model `spec`.
    pub fn embedding(&self, spec: &str) -> Result<Arc<EmbeddingModel>> {
        let local = self.local(spec);
        match self.get_or_load(format!("embed:{local}"), spec, |c| {
            tracing::info!(model = spec, local = %local, "loading embedding model");
            Ok(Loaded::Embedding(Arc::new(EmbeddingModel::load(
                &local, &c.options,
            )?)))
        })? {
            Loaded::Embedding(m) => Ok(m),
            Loaded::Language(_) => unreachable!("embed: keys hold embedding models"),
        }
    }

    /// Specs of the language models loaded now (without adapters), most recent first.
    pub fn loaded(&self) -> Vec<String> {
        let entries = self.entries.lock().expect("model cache");
        let mut out: Vec<String> = Vec::new();
        for e in entries.iter().rev() {
            if matches!(e.model, Loaded::Language(_)) && !out.contains(&e.spec) {
                out.push(e.spec.clone());
            }
        }
        out
    }
}

fn apply_adapter(base: &LanguageModel, dir: &Path) -> Result<LanguageModel> {
    flotilla_train::load_with_adapter(base, dir)
}

#[cfg(test)]
mod tests {
    use super::here;

    #[test]
    fn a_model_path_from_elsewhere_is_found_by_name_in_the_cache() {
        let cache = std::env::temp_dir().join(format!("flotilla-here-{}", std::process::id()));
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("qwen.gguf"), b"x").unwrap();
        let found = here("/home/ana/models/qwen.gguf", &cache);
        assert_eq!(found, cache.join("qwen.gguf").to_string_lossy());
        assert_eq!(here("smollm2", &cache), "smollm2");
        assert_eq!(here("hf:Qwen/Qwen2.5-7B", &cache), "hf:Qwen/Qwen2.5-7B");
        assert_eq!(here("/nowhere/other.gguf", &cache), "/nowhere/other.gguf");
        let _ = std::fs::remove_dir_all(&cache);
    }
}
