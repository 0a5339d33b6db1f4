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
}

impl Capabilities {
    /// Looks at this machine: `device` as given on the command line (`cpu`, `cuda:0`), and
    /// `slots` shards at a time.
    pub fn detect(device: &str, slots: u32) -> Capabilities {
        let (gpu_name, gpu_memory_bytes) = if device.starts_with("cuda") {
            let ordinal = device.split_once(':').map(|(_, n)| n).unwrap_or("0");
            nvidia_gpu(ordinal).unwrap_or_default()
        } else {
            (String::new(), 0)
        };
        Capabilities {
            device: device.to_string(),
            gpu_name,
            gpu_memory_bytes,
            ram_bytes: total_ram_bytes(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            models_cached: cached_models(),
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
        }
    }
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
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// GPU name and memory from `nvidia-smi`, when it is installed.
fn nvidia_gpu(ordinal: &str) -> Option<(String, u64)> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
            "-i",
            ordinal,
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (name, mib) = text.lines().next()?.rsplit_once(',')?;
    let mib: u64 = mib.trim().parse().ok()?;
    Some((name.trim().to_string(), mib * 1024 * 1024))
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
    fn hub_cache_folders_become_hf_specs() {
        let dir = std::env::temp_dir().join(format!("flotilla-hub-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("models--Qwen--Qwen2.5-7B-Instruct")).unwrap();
        std::fs::create_dir_all(dir.join("datasets--x--y")).unwrap();
        assert_eq!(hf_cache_models(&dir), ["hf:Qwen/Qwen2.5-7B-Instruct"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
