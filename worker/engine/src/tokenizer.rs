//! Text <-> token ids, from a `tokenizer.json` or from a GGUF file's metadata.
//!
//! GGUF files carry a gpt2-style BPE vocabulary plus a `tokenizer.ggml.pre` name that says how
//! text is split before BPE. candle's `TokenizerFromGguf` knows only a few of those names and
//! falls back to a GPT-2 pipeline that adds a prefix space (SmolLM2's "The" becomes id 378
//! instead of 504), so flotilla maps each `pre` value to the split llama.cpp uses for it.
//!
//! SentencePiece vocabularies (`tokenizer.ggml.model = llama`: Gemma, Llama 2, Mistral) carry
//! scores instead of merges; [`spm`] turns them into the equivalent BPE.

mod spm;

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use std::collections::HashSet;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// Token texts that end a turn or a document: llama.cpp treats these as end-of-generation
/// when the vocabulary marks them as control tokens, and so does flotilla.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "<|eom_id|>",
    "<end_of_utterance>",
];

/// GPT-2's split: contractions, words with an optional leading space, numbers, punctuation runs.
const REGEX_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's split: numbers in groups of at most three digits.
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: like Llama 3's, but every digit on its own.
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes llama.cpp applies, in order, for a `tokenizer.ggml.pre` value, and whether BPE
/// keeps a word whole when it is already in the vocabulary (`ignore_merges`).
fn split_for_pre(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => (vec![REGEX_GPT2], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            (vec![r"\p{N}", REGEX_GPT2], false)
        }
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" | "falcon3" | "pixtral" => {
            (vec![REGEX_LLAMA3], true)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (vec![REGEX_QWEN2], false),
        _ => return None,
    })
}

/// A tokenizer plus what the engine needs to know about its special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token text, as chat templates want it (`bos_token`).
    pub bos_token: Option<String>,
    /// End-of-sequence token text (`eos_token`).
    pub eos_token: Option<String>,
    /// Ids that end generation.
    pub eos_ids: Vec<u32>,
    /// Ids of special (control) tokens, skipped when decoding for display.
    special_ids: HashSet<u32>,
}

impl TextTokenizer {
    /// Build from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let get_str = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
        let get_u32 = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
        let get_bool = |key: &str| md.get(key).and_then(|v| v.to_bool().ok());

        let model = get_str("tokenizer.ggml.model").ok_or_else(|| {
            Error::model(
                path,
                "GGUF metadata has no tokenizer (tokenizer.ggml.model)",
            )
        })?;
        let tokens = string_array(content, "tokenizer.ggml.tokens", path)?;
        let token_types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| Error::model(path, format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|v| match v {
                    gguf_file::Value::I32(x) => *x as i64,
                    gguf_file::Value::U32(x) => *x as i64,
                    gguf_file::Value::I8(x) => *x as i64,
                    gguf_file::Value::U8(x) => *x as i64,
                    _ => 1,
                })
                .collect(),
            None => vec![1; tokens.len()],
        };
        let mut tk = match model.as_str() {
            "gpt2" => gpt2_bpe(content, &tokens, path)?,
            "llama" => {
                let scores = float_array(content, "tokenizer.ggml.scores", path)?;
                if scores.len() != tokens.len() {
                    return Err(Error::model(
                        path,
                        format!(
                            "tokenizer.ggml.scores has {} entries for {} tokens",
                            scores.len(),
                            tokens.len()
                        ),
                    ));
                }
                let unk = get_u32("tokenizer.ggml.unknown_token_id")
                    .and_then(|i| tokens.get(i as usize))
                    .map(String::as_str);
                // llama.cpp adds the prefix space unless the file says otherwise.
                let prefix = get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                spm::build(&tokens, &scores, unk, prefix, path)?
            }
            other => {
                return Err(Error::model(
                    path,
                    format!(
                        "tokenizer.ggml.model = `{other}` is not supported from GGUF (flotilla \
                         reads `gpt2` byte-level BPE: Llama 3, Qwen2, SmolLM2; and `llama` \
                         SentencePiece: Gemma, Llama 2, Mistral); load the model's Hugging Face \
                         directory instead"
                    ),
                ))
            }
        };

        // Unknown (2), control (3) and user-defined (4) tokens are matched whole in the text,
        // never split, as llama.cpp's special-token pass does.
        let mut special_ids = HashSet::new();
        let mut added = Vec::new();
        for (id, (text, ty)) in tokens.iter().zip(token_types.iter()).enumerate() {
            if (2..=4).contains(ty) {
                added.push(AddedToken::from(text.clone(), true).normalized(false));
                if *ty == 3 {
                    special_ids.insert(id as u32);
                }
            }
        }
        tk.add_special_tokens(added)
            .map_err(|e| Error::model(path, format!("tokenizer special tokens: {e}")))?;

        let bos_id = get_u32("tokenizer.ggml.bos_token_id");
        let eos_id = get_u32("tokenizer.ggml.eos_token_id");
        let tok_text = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned();
        let bos_token = tok_text(bos_id);
        let eos_token = tok_text(eos_id);
        let add_bos = get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
        if add_bos {
            if let (Some(id), Some(text)) = (bos_id, bos_token.clone()) {
                let post = TemplateProcessing::builder()
                    .try_single(format!("{text} $0"))
                    .and_then(|b| b.try_pair(format!("{text} $A {text} $B")))
                    .map_err(|e| Error::model(path, format!("tokenizer: {e}")))?
                    .special_tokens(vec![(text, id)])
                    .build()
                    .map_err(|e| Error::model(path, format!("tokenizer: {e}")))?;
                tk.with_post_processor(Some(post));
            }
        }

        let mut eos_ids: Vec<u32> = eos_id
            .into_iter()
            .chain(get_u32("tokenizer.ggml.eot_token_id"))
            .chain(get_u32("tokenizer.ggml.eom_token_id"))
            .collect();
        for (id, text) in tokens.iter().enumerate() {
            if special_ids.contains(&(id as u32))
                && END_OF_GENERATION_TEXTS.contains(&text.as_str())
            {
                eos_ids.push(id as u32);
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            inner: tk,
            bos_token,
            eos_token,
            eos_ids,
            special_ids,
        })
    }

    /// Load a `tokenizer.json`; `config` is the parsed `tokenizer_config.json` if there is one,
    /// `extra_eos` the ids a `generation_config.json` lists.
    pub fn from_file(
        path: &Path,
        config: Option<&serde_json::Value>,
        extra_eos: &[u32],
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::model(path, format!("cannot read tokenizer: {e}")))?;
        let token_text = |key: &str| -> Option<String> {
            let v = config?.get(key)?;
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let bos_token = token_text("bos_token");
        let eos_token = token_text("eos_token");
        let mut special_ids: HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let mut eos_ids: Vec<u32> = extra_eos.to_vec();
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
            special_ids.insert(id);
        }
        for (id, tok) in inner.get_added_tokens_decoder() {
            if tok.special && END_OF_GENERATION_TEXTS.contains(&tok.content.as_str()) {
                eos_ids.push(id);
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            inner,
            bos_token,
            eos_token,
            eos_ids,
            special_ids,
        })
    }

    /// Token ids for `text`. `add_special` applies the tokenizer's own post-processing (the
    /// BOS its config asks for); special-token markup in the text is always matched whole.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::input(format!("cannot tokenize prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text for `ids`; `skip_special` drops control tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = if skip_special {
            ids.iter()
                .copied()
                .filter(|i| !self.special_ids.contains(i))
                .collect()
        } else {
            ids.to_vec()
        };
        self.inner
            .decode(&ids, false)
            .map_err(|e| Error::input(format!("cannot decode tokens: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The underlying `tokenizers` object (for saving as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// A gpt2-style byte-level BPE (`tokenizer.ggml.model = gpt2`) with the split llama.cpp uses
/// for the file's `tokenizer.ggml.pre`.
fn gpt2_bpe(
    content: &gguf_file::Content,
    tokens: &[String],
    path: &Path,
) -> Result<tokenizers::Tokenizer> {
    let merges = string_array(content, "tokenizer.ggml.merges", path)?;
    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "default".to_string());
    let (regexes, ignore_merges) = split_for_pre(&pre).ok_or_else(|| {
        Error::model(
            path,
            format!("tokenizer.ggml.pre = `{pre}` is not a pre-tokenizer flotilla knows"),
        )
    })?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    Error::model(path, format!("tokenizer.ggml.merges: bad entry `{m}`"))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| Error::model(path, format!("tokenizer: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for re in regexes {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::model(path, format!("tokenizer regex: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    tk.with_pre_tokenizer(Some(Sequence::new(steps)));
    tk.with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(tk)
}

fn float_array(content: &gguf_file::Content, key: &str, path: &Path) -> Result<Vec<f32>> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| Error::model(path, format!("GGUF metadata has no `{key}`")))?;
    v.to_vec()
        .map_err(|e| Error::model(path, format!("{key}: {e}")))?
        .iter()
        .map(|x| {
            x.to_f32()
                .map_err(|e| Error::model(path, format!("{key}: {e}")))
        })
        .collect()
}

fn string_array(content: &gguf_file::Content, key: &str, path: &Path) -> Result<Vec<String>> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| Error::model(path, format!("GGUF metadata has no `{key}`")))?;
    v.to_vec()
        .map_err(|e| Error::model(path, format!("{key}: {e}")))?
        .iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| Error::model(path, format!("{key}: {e}")))
        })
        .collect()
}
