//! LoRA adapters in PEFT's layout: `adapter_config.json` beside `adapter_model.safetensors`,
//! whose keys read `base_model.model.model.layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight`.
//! Adapters written here load in PEFT (`PeftModel.from_pretrained`), and adapters PEFT saved
//! load here. The update of a projection is `scaling * B @ A`, with `scaling = alpha / r`
//! (or `alpha / sqrt(r)` under rsLoRA), per module when PEFT's `rank_pattern` /
//! `alpha_pattern` say so.

use super::config::{LoraSettings, TargetModule};
use candle_core::{DType, Device, Tensor};
use flotilla_engine::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Which projection of which block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoraKey {
    pub layer: usize,
    pub module: TargetModule,
}

impl LoraKey {
    /// The PEFT tensor name; `which` is `lora_A` or `lora_B`.
    pub fn peft_name(&self, which: &str) -> String {
        format!(
            "base_model.model.model.layers.{}.{}.{which}.weight",
            self.layer,
            self.module.path()
        )
    }

    /// Parse a PEFT tensor name into (key, `lora_A` | `lora_B`).
    fn parse(name: &str) -> Option<(Self, &str)> {
        let rest = name.strip_prefix("base_model.model.")?;
        let rest = rest.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let rest = rest.strip_suffix(".weight")?;
        // Adapters saved with a name in the key (`lora_A.default`) are accepted too.
        let (path, which) = rest.rsplit_once('.')?;
        let (path, which) = if which.starts_with("lora_") {
            (path, which)
        } else {
            let (p, w) = path.rsplit_once('.')?;
            (p, w)
        };
        let module = TargetModule::ALL.into_iter().find(|m| m.path() == path)?;
        Some((LoraKey { layer, module }, which))
    }
}

/// `adapter_config.json`, with the fields PEFT writes. Unknown fields are kept as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Per-module ranks (informational: the rank is read from each A's shape).
    #[serde(default)]
    pub rank_pattern: OrderedMap<usize>,
    /// Per-module alphas, matched as PEFT does: the first key, in the file's order, whose
    /// regex `(.*\.)?(KEY)$` matches the module's name.
    #[serde(default)]
    pub alpha_pattern: OrderedMap<f64>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_bias() -> String {
    "none".into()
}

/// A JSON object kept in the file's key order (PEFT's pattern lookups depend on it).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
            fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(OrderedMap(Vec::new()))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// PEFT's pattern lookup: the first key whose regex `(.*\.)?(KEY)$` matches `name`.
fn pattern_lookup<'a, V>(patterns: &'a OrderedMap<V>, name: &str) -> Option<&'a V> {
    patterns.0.iter().find_map(|(key, v)| {
        let re = regex::Regex::new(&format!(r"^(.*\.)?({key})$")).ok()?;
        re.is_match(name).then_some(v)
    })
}

/// A LoRA adapter: its configuration and one (A, B) pair per adapted projection.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub config: AdapterConfig,
    /// A is (rank, in), B is (out, rank); f32.
    pub weights: BTreeMap<LoraKey, (Tensor, Tensor)>,
}

impl LoraAdapter {
    /// An adapter from trained weights.
    pub fn new(
        settings: &LoraSettings,
        base_model: &str,
        weights: BTreeMap<LoraKey, (Tensor, Tensor)>,
    ) -> Self {
        let modules: Vec<&str> = settings
            .modules()
            .unwrap_or_default()
            .iter()
            .map(|m| m.name())
            .collect();
        let mut extra = BTreeMap::new();
        for (k, v) in [
            ("inference_mode", serde_json::json!(true)),
            ("init_lora_weights", serde_json::json!(true)),
            ("layers_pattern", serde_json::Value::Null),
            ("layers_to_transform", serde_json::Value::Null),
            ("revision", serde_json::Value::Null),
            ("auto_mapping", serde_json::Value::Null),
        ] {
            extra.insert(k.to_string(), v);
        }
        Self {
            config: AdapterConfig {
                peft_type: "LORA".into(),
                task_type: Some("CAUSAL_LM".into()),
                r: settings.rank,
                lora_alpha: settings.alpha,
                lora_dropout: settings.dropout as f64,
                target_modules: serde_json::json!(modules),
                base_model_name_or_path: Some(base_model.to_string()),
                use_rslora: settings.use_rslora,
                use_dora: false,
                fan_in_fan_out: false,
                bias: "none".into(),
                rank_pattern: OrderedMap::default(),
                alpha_pattern: OrderedMap::default(),
                modules_to_save: None,
                extra,
            },
            weights,
        }
    }

    /// Read a PEFT adapter directory. Adapters this engine cannot apply faithfully (DoRA,
    /// trained biases, extra saved modules, embedding adapters) are refused with the reason.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| Error::model(&cfg_path, format!("not a PEFT adapter config: {e}")))?;
        let refuse = |why: &str| Err(Error::model(&cfg_path, why));
        if config.peft_type != "LORA" {
            return refuse(&format!(
                "peft_type is {}; only LORA adapters are supported",
                config.peft_type
            ));
        }
        if config.use_dora {
            return refuse("use_dora: DoRA adapters are not supported");
        }
        if config.bias != "none" {
            return refuse("bias: adapters that train biases are not supported (need \"none\")");
        }
        if config.fan_in_fan_out {
            return refuse(
                "fan_in_fan_out: only llama / qwen2 (fan_in_fan_out false) layouts are supported",
            );
        }
        if config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_empty())
        {
            return refuse("modules_to_save: adapters that save whole modules are not supported");
        }
        // Settings that change what an adapter computes without changing its tensors.
        for field in [
            "alora_invocation_tokens",
            "layer_replication",
            "megatron_config",
        ] {
            if config.extra.get(field).is_some_and(|v| !v.is_null()) {
                return refuse(&format!(
                    "{field}: not supported (it changes how the adapter applies)"
                ));
            }
        }
        let st_path = dir.join("adapter_model.safetensors");
        if !st_path.exists() {
            return Err(Error::model(
                dir,
                "no adapter_model.safetensors (PyTorch .bin adapters are not read; re-save with safe_serialization=True)",
            ));
        }
        let raw = candle_core::safetensors::load(&st_path, &Device::Cpu)
            .map_err(|e| Error::model(&st_path, format!("not a readable safetensors file: {e}")))?;
        let mut a_map: HashMap<LoraKey, Tensor> = HashMap::new();
        let mut b_map: HashMap<LoraKey, Tensor> = HashMap::new();
        for (name, t) in raw {
            let Some((key, which)) = LoraKey::parse(&name) else {
                return Err(Error::model(
                    &st_path,
                    format!("tensor `{name}` is not a LoRA weight of a llama / qwen2 projection"),
                ));
            };
            let t = t.to_dtype(DType::F32)?;
            match which {
                "lora_A" => a_map.insert(key, t),
                "lora_B" => b_map.insert(key, t),
                other => {
                    return Err(Error::model(
                        &st_path,
                        format!("tensor `{name}`: unexpected part `{other}`"),
                    ))
                }
            };
        }
        let mut weights = BTreeMap::new();
        for (key, a) in a_map {
            let b = b_map.remove(&key).ok_or_else(|| {
                Error::model(
                    &st_path,
                    format!("`{}` has no lora_B", key.peft_name("lora_A")),
                )
            })?;
            let (ra, _) = a.dims2()?;
            let (_, rb) = b.dims2()?;
            if ra != rb {
                return Err(Error::model(
                    &st_path,
                    format!(
                        "`{}`: rank of A ({ra}) and B ({rb}) differ",
                        key.peft_name("lora_A")
                    ),
                ));
            }
            weights.insert(key, (a, b));
        }
        if let Some(key) = b_map.keys().next() {
            return Err(Error::model(
                &st_path,
                format!("`{}` has no lora_A", key.peft_name("lora_B")),
            ));
        }
        if weights.is_empty() {
            return Err(Error::model(&st_path, "the adapter holds no LoRA weights"));
        }
        Ok(Self { config, weights })
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (key, (a, b)) in &self.weights {
            tensors.insert(
                key.peft_name("lora_A"),
                a.to_device(&Device::Cpu)?.contiguous()?,
            );
            tensors.insert(
                key.peft_name("lora_B"),
                b.to_device(&Device::Cpu)?.contiguous()?,
            );
        }
        let st = dir.join("adapter_model.safetensors");
        let tmp = dir.join(".adapter_model.safetensors.tmp");
        candle_core::safetensors::save(&tensors, &tmp).map_err(|e| Error::model(&tmp, e))?;
        std::fs::rename(&tmp, &st).map_err(|e| Error::io(&st, e))?;
        let cfg = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&self.config).map_err(|e| Error::model(&cfg, e))?;
        std::fs::write(&cfg, text + "\n").map_err(|e| Error::io(&cfg, e))?;
        Ok(())
    }

    /// The scaling of one projection's update, honouring PEFT's rank / alpha patterns.
    pub fn scaling(&self, key: &LoraKey) -> f64 {
        let rank = self
            .weights
            .get(key)
            .and_then(|(a, _)| a.dims2().ok())
            .map(|(r, _)| r)
            .unwrap_or(self.config.r);
        // PEFT matches patterns against the module's name inside the model.
        let full = format!("model.layers.{}.{}", key.layer, key.module.path());
        let alpha = pattern_lookup(&self.config.alpha_pattern, &full)
            .copied()
            .unwrap_or(self.config.lora_alpha);
        if self.config.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }

    /// The dense update `scaling * B @ A`, (out, in).
    pub fn delta(&self, key: &LoraKey) -> Result<Option<Tensor>> {
        let Some((a, b)) = self.weights.get(key) else {
            return Ok(None);
        };
        Ok(Some((b.matmul(a)? * self.scaling(key))?))
    }

    /// The number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.weights
            .values()
            .map(|(a, b)| a.elem_count() + b.elem_count())
            .sum()
    }

    /// Check that every adapted projection exists in a model of this shape.
    pub fn check_fits(
        &self,
        config: &flotilla_engine::models::config::ModelConfig,
        dir: &Path,
    ) -> Result<()> {
        let h = config.hidden_size;
        let qd = config.num_heads * config.head_dim;
        let kvd = config.num_kv_heads * config.head_dim;
        let ff = config.intermediate_size;
        for (key, (a, b)) in &self.weights {
            if key.layer >= config.num_layers {
                return Err(Error::model(
                    dir,
                    format!(
                        "adapter has layer {} but the model has {} layers",
                        key.layer, config.num_layers
                    ),
                ));
            }
            let (out, inp) = match key.module {
                TargetModule::QProj => (qd, h),
                TargetModule::KProj | TargetModule::VProj => (kvd, h),
                TargetModule::OProj => (h, qd),
                TargetModule::GateProj | TargetModule::UpProj => (ff, h),
                TargetModule::DownProj => (h, ff),
            };
            let (_, ai) = a.dims2()?;
            let (bo, _) = b.dims2()?;
            if ai != inp || bo != out {
                return Err(Error::model(
                    dir,
                    format!(
                        "`{}` is for a ({bo} x {ai}) projection but the model's is ({out} x {inp}): \
                         was this adapter trained on another base model?",
                        key.peft_name("lora_A")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_names_round_trip() {
        for m in TargetModule::ALL {
            let k = LoraKey {
                layer: 17,
                module: m,
            };
            for which in ["lora_A", "lora_B"] {
                let name = k.peft_name(which);
                assert_eq!(LoraKey::parse(&name), Some((k, which)));
            }
        }
        assert_eq!(
            LoraKey::parse(
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
            ),
            Some((
                LoraKey {
                    layer: 0,
                    module: TargetModule::QProj
                },
                "lora_A"
            ))
        );
        assert_eq!(
            LoraKey::parse("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
                .unwrap()
                .0
                .peft_name("lora_A"),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
        assert!(LoraKey::parse("base_model.model.lm_head.lora_A.weight").is_none());
    }

    #[test]
    fn alpha_patterns_match_as_peft_matches_them() {
        let cfg: AdapterConfig = serde_json::from_str(
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                "alpha_pattern": {"v_proj": 32, "layers.5.self_attn.v_proj": 16,
                                  "layers\\.7\\.mlp\\.down_proj": 4}}"#,
        )
        .unwrap();
        let adapter = LoraAdapter {
            config: cfg,
            weights: BTreeMap::new(),
        };
        let s = |layer, module| adapter.scaling(&LoraKey { layer, module });
        // The first matching key in the file's order wins: `v_proj` before the layer-5 key.
        assert_eq!(s(5, TargetModule::VProj), 8.0);
        assert_eq!(s(15, TargetModule::VProj), 8.0);
        // Regex keys, anchored at a module-name boundary.
        assert_eq!(s(7, TargetModule::DownProj), 1.0);
        assert_eq!(s(17, TargetModule::DownProj), 2.0);
        assert_eq!(s(5, TargetModule::QProj), 2.0);
        let suffix_only: AdapterConfig = serde_json::from_str(
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                "alpha_pattern": {"5.self_attn.v_proj": 16}}"#,
        )
        .unwrap();
        let adapter = LoraAdapter {
            config: suffix_only,
            weights: BTreeMap::new(),
        };
        // `(.*\.)?` only matches at a dot: layer 15 and 25 are not layer 5.
        assert_eq!(
            adapter.scaling(&LoraKey {
                layer: 5,
                module: TargetModule::VProj
            }),
            4.0
        );
        assert_eq!(
            adapter.scaling(&LoraKey {
                layer: 15,
                module: TargetModule::VProj
            }),
            2.0
        );
    }
}
