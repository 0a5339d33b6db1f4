//! What a worker announces about itself: device, GPU, memory, cores, models on disk and in
//! memory, slots, version, hostname. The same facts go into the etcd registration (as JSON,
//! [`Capabilities`]) and into the `Hello` of the Work stream (as protobuf).

use flotilla_engine::loader::{flotilla_home, model_cache, DEMO_ALIASES};
use flotilla_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A worker's capabilities; the value of its registry key, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `cpu`, `cuda:0`, `metal:0`.
    pub device: String,
    #[serde(default)]
    pub gpu_name: String,
    #[serde(default)]
    pub gpu_memory_bytes: u64,
    #[serde(default)]
    pub ram_bytes: u64,
    #[serde(default)]
    pub cores: u32,
    /// Model specs this worker can load without fetching anything: demo aliases, GGUF files
    /// and folders in the model cache, `hf:org/name` in the Hugging Face cache.
    #[serde(default)]
    pub models_cached: Vec<String>,
    /// Model specs loaded in memory now.
    #[serde(default)]
    pub models_loaded: Vec<String>,
    #[serde(default)]
    pub slots: u32,
    /// flotilla's version.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub hostname: String,
    /// Free memory when measured: the GPU's for a GPU worker, the OS's available memory for a
    /// CPU worker; 0 when unknown.
    #[serde(default)]
    pub memory_free_bytes: u64,
    /// The GPU's compute capability ("8.6"), when known.
    #[serde(default)]
    pub compute_capability: String,
    /// Memory each cached language model needs, from its tensor sizes.
    #[serde(default)]
    pub model_footprints: Vec<Footprint>,
}

/// What a model needs in memory: weights as loaded, KV cache per token, its context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    pub spec: String,
    pub weights_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub context_tokens: u64,
}

impl Footprint {
    /// The footprint of the language model at `spec` on `device` (`None` for embedders and
    /// anything unreadable). GGUF weights stay quantized, so they take their file's size; a
    /// Hugging Face folder's weights load in the `auto` precision's dtype
    /// ([`flotilla_engine::device::precision_dtype`]: bf16 on a CUDA build for bf16 GPUs, f32
    /// elsewhere), whatever their dtype on disk. The KV cache is f32: layers x 2 x kv heads x
    /// head size x 4 bytes per token.
    pub fn of(spec: &str, path: &Path, device: &str) -> Option<Self> {
        let c = flotilla_engine::loader::model_config(&path.display().to_string()).ok()?;
        let weights_bytes = if path.is_file() {
            std::fs::metadata(path).ok()?.len()
        } else {
            let on_disk: u64 = std::fs::read_dir(path)
                .ok()?
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum();
            let config = std::fs::read_to_string(path.join("config.json")).unwrap_or_default();
            let half = config.contains("bfloat16") || config.contains("float16");
            let elements = if half { on_disk / 2 } else { on_disk / 4 };
            let bf16 = device.starts_with("cuda") && flotilla_engine::device::built_for_bf16_gpus();
            elements * if bf16 { 2 } else { 4 }
        };
        Some(Self {
            spec: spec.to_string(),
            weights_bytes,
            kv_bytes_per_token: (c.num_layers * 2 * c.num_kv_heads * c.head_dim * 4) as u64,
            context_tokens: c.max_position_embeddings as u64,
        })
    }

    fn to_proto(&self) -> pb::ModelFootprint {
        pb::ModelFootprint {
            spec: self.spec.clone(),
            weights_bytes: self.weights_bytes,
            kv_bytes_per_token: self.kv_bytes_per_token,
            context_tokens: self.context_tokens,
        }
    }

    fn from_proto(p: &pb::ModelFootprint) -> Self {
        Self {
            spec: p.spec.clone(),
            weights_bytes: p.weights_bytes,
            kv_bytes_per_token: p.kv_bytes_per_token,
            context_tokens: p.context_tokens,
        }
    }
}

impl Capabilities {
    /// Looks at this machine: `device` as given on the command line (`cpu`, `cuda:0`), and
    /// `slots` shards at a time.
    pub fn detect(device: &str, slots: u32) -> Capabilities {
        let gpu = gpu_ordinal(device).and_then(nvidia_gpu).unwrap_or_default();
        let models_cached = cached_models();
        let cache = model_cache();
        let model_footprints = models_cached
            .iter()
            .filter(|m| !m.starts_with("hf:"))
            .filter_map(|m| {
                let path = DEMO_ALIASES
                    .iter()
                    .find(|(a, _)| a == m)
                    .map(|(_, f)| cache.join(f))
                    .unwrap_or_else(|| m.into());
                Footprint::of(m, &path, device)
            })
            .collect();
        Capabilities {
            device: device.to_string(),
            gpu_name: gpu.name,
            gpu_memory_bytes: gpu.total_bytes,
            memory_free_bytes: free_memory_bytes(device),
            compute_capability: gpu.compute_capability,
            model_footprints,
            ram_bytes: total_ram_bytes(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            models_cached,
            models_loaded: Vec::new(),
            slots,
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: hostname(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("capabilities serialize")
    }

    /// Reads a registry value; `None` if it is not capabilities JSON.
    pub fn from_json(json: &str) -> Option<Capabilities> {
        serde_json::from_str(json).ok()
    }

    pub fn to_proto(&self) -> pb::Capabilities {
        pb::Capabilities {
            device: self.device.clone(),
            gpu_name: self.gpu_name.clone(),
            gpu_memory_bytes: self.gpu_memory_bytes,
            ram_bytes: self.ram_bytes,
            cores: self.cores,
            models_cached: self.models_cached.clone(),
            models_loaded: self.models_loaded.clone(),
            slots: self.slots,
            version: self.version.clone(),
            hostname: self.hostname.clone(),
            memory_free_bytes: self.memory_free_bytes,
            compute_capability: self.compute_capability.clone(),
            model_footprints: self
                .model_footprints
                .iter()
                .map(Footprint::to_proto)
                .collect(),
        }
    }

    pub fn from_proto(p: &pb::Capabilities) -> Capabilities {
        Capabilities {
            device: p.device.clone(),
            gpu_name: p.gpu_name.clone(),
            gpu_memory_bytes: p.gpu_memory_bytes,
            ram_bytes: p.ram_bytes,
            cores: p.cores,
            models_cached: p.models_cached.clone(),
            models_loaded: p.models_loaded.clone(),
            slots: p.slots,
            version: p.version.clone(),
            hostname: p.hostname.clone(),
            memory_free_bytes: p.memory_free_bytes,
            compute_capability: p.compute_capability.clone(),
            model_footprints: p
                .model_footprints
                .iter()
                .map(Footprint::from_proto)
                .collect(),
        }
    }
}

/// The CUDA ordinal of `cuda:N` (`cuda` alone is 0); `None` for other devices.
fn gpu_ordinal(device: &str) -> Option<&str> {
    let rest = device.strip_prefix("cuda")?;
    Some(rest.strip_prefix(':').unwrap_or("0"))
}

/// Free memory for `device` now: the GPU's from `nvidia-smi`, the OS's `MemAvailable` for the
/// CPU; 0 when it cannot be read. GPU readings are kept for five seconds (each costs a
/// process).
pub fn free_memory_bytes(device: &str) -> u64 {
    match gpu_ordinal(device) {
        Some(ordinal) => {
            static LAST: std::sync::Mutex<Option<(std::time::Instant, u64)>> =
                std::sync::Mutex::new(None);
            let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, v)) = *last {
                if at.elapsed() < std::time::Duration::from_secs(5) {
                    return v;
                }
            }
            let v = nvidia_gpu(ordinal).map_or(0, |g| g.free_bytes);
            *last = Some((std::time::Instant::now(), v));
            v
        }
        None => meminfo_kb("MemAvailable:").map_or(0, |kb| kb * 1024),
    }
}

/// (total, free) bytes of the GPU of `device` (`cuda:N`), from `nvidia-smi`.
pub fn gpu_memory(device: &str) -> Option<(u64, u64)> {
    let g = nvidia_gpu(gpu_ordinal(device)?)?;
    Some((g.total_bytes, g.free_bytes))
}

/// A `/proc/meminfo` field in kB.
fn meminfo_kb(field: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
}

/// The machine's name: the kernel's hostname, else `HOSTNAME`, else empty.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default()
}

/// Total memory from `/proc/meminfo` (0 where there is none).
fn total_ram_bytes() -> u64 {
    meminfo_kb("MemTotal:").map_or(0, |kb| kb * 1024)
}

/// What `nvidia-smi` says of one GPU.
#[derive(Default)]
struct Gpu {
    name: String,
    total_bytes: u64,
    free_bytes: u64,
    compute_capability: String,
}

/// GPU name, memory and compute capability from `nvidia-smi`, when it is installed.
fn nvidia_gpu(ordinal: &str) -> Option<Gpu> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total,memory.free,compute_cap",
            "--format=csv,noheader,nounits",
            "-i",
            ordinal,
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))
}

/// One line of `name, total MiB, free MiB, compute capability` (a name may hold commas).
fn parse_nvidia_smi(text: &str) -> Option<Gpu> {
    let line = text.lines().next()?;
    let mut parts = line.rsplitn(4, ',');
    let cap = parts.next()?.trim().to_string();
    let free: u64 = parts.next()?.trim().parse().ok()?;
    let total: u64 = parts.next()?.trim().parse().ok()?;
    let name = parts.next()?.trim().to_string();
    Some(Gpu {
        name,
        total_bytes: total * 1024 * 1024,
        free_bytes: free * 1024 * 1024,
        compute_capability: cap,
    })
}

/// Model specs loadable from local caches, sorted.
pub fn cached_models() -> Vec<String> {
    let mut out = Vec::new();
    let cache = model_cache();
    for (alias, file) in DEMO_ALIASES {
        if cache.join(file).exists() {
            out.push(alias.to_string());
        }
    }
    if let Ok(entries) = std::fs::read_dir(&cache) {
        for e in entries.flatten() {
            let p = e.path();
            let is_model =
                p.extension().is_some_and(|x| x == "gguf") || p.join("config.json").exists();
            if is_model {
                out.push(p.display().to_string());
            }
        }
    }
    out.extend(hf_cache_models(&hf_hub_cache()));
    out.sort();
    out.dedup();
    out
}

/// The Hugging Face hub cache folder (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`).
fn hf_hub_cache() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return std::path::PathBuf::from(p).join("hub");
    }
    flotilla_home()
        .parent()
        .map(|c| c.join("huggingface").join("hub"))
        .unwrap_or_default()
}

/// `hf:org/name` for every `models--org--name` folder in a hub cache.
fn hf_cache_models(hub: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(hub) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("models--")?;
            let (org, model) = rest.split_once("--")?;
            Some(format!("hf:{org}/{model}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_describe_this_machine_and_round_trip() {
        let caps = Capabilities::detect("cpu", 2);
        assert_eq!(caps.device, "cpu");
        assert_eq!(caps.slots, 2);
        assert!(caps.cores >= 1);
        assert!(caps.ram_bytes > 0, "Linux has /proc/meminfo");
        assert_eq!(Capabilities::from_json(&caps.to_json()).unwrap(), caps);
        assert_eq!(Capabilities::from_proto(&caps.to_proto()), caps);
        assert_eq!(Capabilities::from_json("not json"), None);
    }

    #[test]
    fn nvidia_smi_lines_are_read_with_commas_in_names() {
        let g = parse_nvidia_smi("NVIDIA H200, 143771, 143000, 9.0\n").unwrap();
        assert_eq!(g.name, "NVIDIA H200");
        assert_eq!(g.total_bytes, 143771 * 1024 * 1024);
        assert_eq!(g.free_bytes, 143000 * 1024 * 1024);
        assert_eq!(g.compute_capability, "9.0");
        let g = parse_nvidia_smi("GeForce RTX 3060, Laptop, 6144, 5000, 8.6").unwrap();
        assert_eq!(g.name, "GeForce RTX 3060, Laptop");
        assert!(parse_nvidia_smi("garbage").is_none());
    }

    #[test]
    fn footprints_come_from_tensor_sizes() {
        let caps = Capabilities::detect("cpu", 1);
        assert!(caps.memory_free_bytes > 0 && caps.memory_free_bytes <= caps.ram_bytes);
        // With the demo models fetched, SmolLM2's footprint: its GGUF's size, 30 layers x 2 x
        // 3 kv heads x 64 x 4 bytes of KV cache per token.
        if let Some(f) = caps.model_footprints.iter().find(|f| f.spec == "smollm2") {
            assert!(f.weights_bytes > 50_000_000, "{f:?}");
            assert_eq!(f.kv_bytes_per_token, 30 * 2 * 3 * 64 * 4);
            assert_eq!(f.context_tokens, 8192);
        }
        assert!(
            caps.model_footprints.iter().all(|f| f.spec != "minilm"),
            "embedders have none"
        );
    }

    #[test]
    fn a_hugging_face_folder_counts_its_weights_in_the_dtype_it_loads_in() {
        let dir = std::env::temp_dir().join(format!("flotilla-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = |dtype: &str| {
            format!(
                r#"{{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
                "vocab_size": 100, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
                "torch_dtype": "{dtype}"}}"#
            )
        };
        std::fs::write(dir.join("model.safetensors"), vec![0u8; 4000]).unwrap();
        // auto precision: bf16 on CUDA only in a build for bf16 GPUs, f32 elsewhere.
        let cuda_elem = if flotilla_engine::device::built_for_bf16_gpus() {
            2
        } else {
            4
        };
        for (dtype, elements) in [("bfloat16", 2000), ("float32", 1000)] {
            std::fs::write(dir.join("config.json"), config(dtype)).unwrap();
            let cpu = Footprint::of("m", &dir, "cpu").expect("a footprint");
            assert_eq!(cpu.weights_bytes, elements * 4, "{dtype} on cpu");
            let gpu = Footprint::of("m", &dir, "cuda:0").expect("a footprint");
            assert_eq!(gpu.weights_bytes, elements * cuda_elem, "{dtype} on cuda");
            assert_eq!(cpu.kv_bytes_per_token, 2 * 2 * 2 * 16 * 4);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hub_cache_folders_become_hf_specs() {
        let dir = std::env::temp_dir().join(format!("flotilla-hub-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("models--Qwen--Qwen2.5-7B-Instruct")).unwrap();
        std::fs::create_dir_all(dir.join("datasets--x--y")).unwrap();
        assert_eq!(hf_cache_models(&dir), ["hf:Qwen/Qwen2.5-7B-Instruct"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
