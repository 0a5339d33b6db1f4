#!/usr/bin/env python3
"""The device check's two halves (standard library only; see scripts/device-check.sh).

`pack` (here, where the binary is built): stage `.device/` for the trip to the GPU machine,
whose carried tree is capped at 64 MiB: the stripped CUDA binary (xz-compressed) and slimmed
copies of the demo models, since the real ones (SmolLM2 Q4_1 94 MB, MiniLM f32 88 MB) do not
fit. Slimming keeps every kind of tensor and op and drops depth: SmolLM2 keeps its first
`--llm-layers` blocks (token embedding requantized Q8_0 -> Q4_0 unless `--keep-embedding`),
MiniLM keeps its first `--embed-layers` layers, matrices in float8 e4m3 (candle reads F8_E4M3
safetensors and casts on CPU and CUDA), vectors in f16; the slimming is device_slim.py.
Outputs are not the real models' (the check compares devices on the same weights, it does not
judge quality); tokens/s are those of the slim model.

`run` (on the GPU machine, or here with `--device cpu`): each step timed, recorded ok/failed
with its error, continuing after a failure, within a deadline; writes device-check.json and
device-check.log after every step.
"""

import argparse
import array
import glob
import hashlib
import json
import lzma
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from device_slim import read_safetensors, slim_bert, slim_gguf

# ----------------------------------------------------------------------------------------------
# pack

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def du(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def cmd_pack(a):
    dest = a.dest
    models = os.path.join(dest, "models")
    os.makedirs(models, exist_ok=True)
    os.makedirs(os.path.join(dest, "bin"), exist_ok=True)
    manifest_path = os.path.join(dest, "MANIFEST.json")
    old = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
    manifest = {"made": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": {}}

    # The binary, compressed (PTX text compresses well); reused when the source is unchanged.
    if a.binary:
        if not os.path.isfile(a.binary):
            raise SystemExit(f"pack: no binary at {a.binary} (run scripts/build-cuda.sh)")
        src_sha = sha256(a.binary)
        xz = os.path.join(dest, "bin", "flotilla.xz")
        if old.get("binary", {}).get("sha256") != src_sha or not os.path.exists(xz):
            print(f"pack: compressing {a.binary}", file=sys.stderr)
            with open(a.binary, "rb") as f, lzma.open(xz + ".part", "wb", preset=9) as g:
                shutil.copyfileobj(f, g, 1 << 20)
            os.replace(xz + ".part", xz)
        cap = a.binary + ".compute-cap"
        manifest["binary"] = {
            "source": os.path.abspath(a.binary), "sha256": src_sha,
            "bytes": os.path.getsize(a.binary), "xz_bytes": os.path.getsize(xz),
            "compute_cap": open(cap).read().strip() if os.path.exists(cap) else None,
        }

    # The models, slimmed; remade when the settings or the sources change.
    llm_src = os.path.join(a.model_cache, "SmolLM2-135M-Instruct.Q4_1.gguf")
    emb_src = os.path.join(a.model_cache, "all-MiniLM-L6-v2")
    for p in (llm_src, emb_src):
        if not os.path.exists(p):
            raise SystemExit(f"pack: {p} is missing (run scripts/fetch-models.sh)")
    llm = {"source": llm_src, "layers": a.llm_layers, "q4_0_embedding": not a.keep_embedding,
           "source_bytes": os.path.getsize(llm_src)}
    llm_dst = os.path.join(models, "smollm2-slim.gguf")
    if old.get("llm", {}).get("settings") != llm or not os.path.exists(llm_dst):
        print(f"pack: slimming {llm_src} to {a.llm_layers} blocks", file=sys.stderr)
        slim_gguf(llm_src, llm_dst, a.llm_layers, not a.keep_embedding)
    manifest["llm"] = {"settings": llm, "path": "models/smollm2-slim.gguf",
                       "bytes": os.path.getsize(llm_dst)}
    emb = {"source": emb_src, "layers": a.embed_layers, "matrix_dtype": a.embed_matrix_dtype,
           "source_bytes": du(emb_src)}
    emb_dst = os.path.join(models, "minilm-slim")
    if old.get("embedder", {}).get("settings") != emb or not os.path.exists(
            os.path.join(emb_dst, "model.safetensors")):
        print(f"pack: slimming {emb_src} to {a.embed_layers} layers, matrices "
              f"{a.embed_matrix_dtype}", file=sys.stderr)
        shutil.rmtree(emb_dst, ignore_errors=True)
        slim_bert(emb_src, emb_dst, a.embed_layers, a.embed_matrix_dtype)
    manifest["embedder"] = {"settings": emb, "path": "models/minilm-slim", "bytes": du(emb_dst)}

    total = du(dest) - (os.path.getsize(manifest_path) if os.path.exists(manifest_path) else 0)
    manifest["total_bytes"] = total
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2)
    mib = total / 2**20
    print(f"pack: {dest} holds {mib:.1f} MiB", file=sys.stderr)
    if mib > a.max_mib:
        raise SystemExit(f"pack: {dest} is {mib:.1f} MiB, over the {a.max_mib} MiB budget "
                         "(lower --llm-layers / --embed-layers)")


# ----------------------------------------------------------------------------------------------
# run

NEEDED_HINT = ("the CUDA binary needs the NVIDIA driver (libcuda.so.1) and CUDA 13's cudart, "
               "cublas, cublasLt, curand and nvrtc")


def lib_candidates():
    """Folders that may hold CUDA 13's runtime libraries, best first."""
    dirs = []
    if os.environ.get("FLOTILLA_CUDA_LIBS"):
        dirs += os.environ["FLOTILLA_CUDA_LIBS"].split(":")
    sites = []
    for py in ("python3", "python"):
        try:
            out = subprocess.run(
                [py, "-c", "import site,sys; print('\\n'.join(site.getsitepackages() + "
                 "[site.getusersitepackages()] + sys.path))"],
                capture_output=True, text=True, timeout=20).stdout
            sites += [s for s in out.splitlines() if s]
        except Exception:
            pass
    # Where pip, conda and distributions put site-packages, in case `python3` here is not the
    # interpreter that has PyTorch.
    for pattern in ("/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages",
                    "/usr/lib/python3/dist-packages", "/opt/conda/lib/python3*/site-packages",
                    "/opt/*/lib/python3*/site-packages", os.path.expanduser(
                        "~/.local/lib/python3*/site-packages"),
                    os.path.expanduser("~/*conda*/lib/python3*/site-packages")):
        sites += sorted(glob.glob(pattern), reverse=True)
    for s in dict.fromkeys(sites):
        dirs += sorted(glob.glob(os.path.join(s, "nvidia", "cu13", "lib")))
        dirs += sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib")))
        dirs += sorted(glob.glob(os.path.join(s, "torch", "lib")))
    dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
    dirs += sorted(glob.glob("/usr/local/cuda-13*/lib64"), reverse=True)
    dirs += ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64"]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def needed_libs(binary, env):
    """The binary's direct DT_NEEDED entries (readelf), or everything ldd lists where binutils
    is not installed."""
    try:
        out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True).stdout
        return [ln.split("[")[1].split("]")[0] for ln in out.splitlines() if "(NEEDED)" in ln]
    except FileNotFoundError:
        found, missing = ldd(binary, env)
        return list(found) + missing


def ldd(binary, env):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env).stdout
    found, missing = {}, []
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            name, rest = [x.strip() for x in line.split("=>", 1)]
            if rest.startswith("not found"):
                missing.append(name)
            else:
                found[name] = rest.split(" (")[0]
        elif line.startswith("/"):  # the dynamic loader itself
            path = line.split(" (")[0]
            found[os.path.basename(path)] = path
    return found, missing


def library_path(binary, env):
    """LD_LIBRARY_PATH that resolves every library the binary needs: for each one the loader
    cannot find, the first candidate folder that holds it."""
    candidates = lib_candidates()
    base = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    add = []
    for _ in range(3):  # a library found may need others (libcublas -> libcublasLt)
        trial = dict(env, LD_LIBRARY_PATH=":".join(add + base))
        _, missing = ldd(binary, trial)
        new = []
        for lib in missing:
            for d in candidates:
                if os.path.exists(os.path.join(d, lib)):
                    if d not in add and d not in new:
                        new.append(d)
                    break
        if not new:
            break
        add += new
    return ":".join(add + base)


class Check:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        os.makedirs(self.out, exist_ok=True)
        self.work = a.work or tempfile.mkdtemp(prefix="flotilla-device-check-")
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.log = open(os.path.join(self.out, "device-check.log"), "w")
        self.t0 = time.time()
        self.deadline = self.t0 + a.budget
        self.summary = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": a.device, "host": platform.node(), "budget_s": a.budget,
            "steps": [],
        }
        self.env = dict(os.environ)
        self.env["FLOTILLA_HOME"] = os.path.join(self.work, "home")
        self.env.setdefault("FLOTILLA_LOG", "warn")
        self.env["NO_COLOR"] = "1"

    def say(self, msg):
        line = f"[{time.time() - self.t0:6.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def write(self):
        s = self.summary
        steps = s["steps"]
        s["passed"] = sum(1 for x in steps if x["status"] == "ok")
        s["failed"] = sum(1 for x in steps if x["status"] == "failed")
        s["skipped"] = sum(1 for x in steps if x["status"] == "skipped")
        s["ok"] = s["failed"] == 0
        s["seconds"] = round(time.time() - self.t0, 1)
        tmp = os.path.join(self.out, "device-check.json.part")
        with open(tmp, "w") as f:
            json.dump(s, f, indent=2, ensure_ascii=False)
        os.replace(tmp, os.path.join(self.out, "device-check.json"))

    def flotilla(self, args, timeout, env=None):
        """Run the binary; returns stdout (parsed as JSON when `--output json` is among args).
        `env`: variables to set for this run only."""
        left = self.deadline - time.time()
        if left < 5:
            raise Skip("out of time")
        timeout = min(timeout, left)
        cmd = [self.a.binary] + args
        self.log.write("$ " + " ".join(cmd) + "\n")
        self.log.flush()
        t = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               env={**self.env, **(env or {})})
        except subprocess.TimeoutExpired as e:
            self.log.write((e.stderr or b"").decode(errors="replace")
                           if isinstance(e.stderr, bytes) else (e.stderr or ""))
            raise Failure(f"timed out after {timeout:.0f}s: {' '.join(args[:2])}")
        self.log.write(p.stdout[-20000:] + p.stderr[-20000:] + f"(exit {p.returncode}, "
                       f"{time.time() - t:.1f}s)\n")
        self.log.flush()
        if p.returncode != 0:
            tail = "\n".join(p.stderr.strip().splitlines()[-6:])
            raise Failure(f"exit {p.returncode}: {tail}")
        if "--output" in args and args[args.index("--output") + 1] == "json":
            return json.loads(p.stdout)
        return p.stdout

    def step(self, name, fn, needs=()):
        rec = {"name": name, "status": "ok", "seconds": 0.0}
        t = time.time()
        self.say(f"{name} ...")
        try:
            stop = self.a.stop_after
            if stop and any(x["name"] == stop for x in self.summary["steps"]):
                raise Skip(f"--stop-after {stop}")
            for dep in needs:
                if not self.ok(dep):
                    raise Skip(f"needs {dep}")
            if time.time() > self.deadline - 5:
                raise Skip("out of time")
            metrics = fn()
            if metrics:
                verdicts = metrics.pop("_checks", {})
                rec["metrics"] = metrics
                if verdicts:
                    rec["checks"] = verdicts
                    bad = [k for k, v in verdicts.items() if not v]
                    if bad:
                        rec["status"] = "failed"
                        rec["error"] = "check failed: " + ", ".join(bad)
        except Skip as e:
            rec["status"], rec["error"] = "skipped", str(e)
        except Failure as e:
            rec["status"], rec["error"] = "failed", str(e)
            if e.metrics:
                rec["metrics"] = e.metrics
        except Exception as e:  # a bug in this script or unexpected output: still continue
            rec["status"], rec["error"] = "failed", f"{type(e).__name__}: {e}"
        rec["seconds"] = round(time.time() - t, 2)
        self.say(f"{name}: {rec['status']} ({rec['seconds']}s)"
                 + (f" {rec['error']}" if rec.get("error") else ""))
        self.summary["steps"].append(rec)
        self.write()
        return rec

    def ok(self, name):
        return any(s["name"] == name and s["status"] == "ok" for s in self.summary["steps"])


class Failure(Exception):
    def __init__(self, msg, metrics=None):
        super().__init__(msg)
        self.metrics = metrics


class Skip(Exception):
    pass


PROMPT = "The harbor library opens at nine. Its oldest book is"
BATCH = ["Tokyo is the capital of", "Water boils at", "The three primary colours are",
         "A haiku has"]
TEXTS = ["The ferry leaves from pier three.", "Boats depart from the third pier.",
         "富士山は日本で一番高い山です。", "Cheese is aged in caves."]


# Teacher-forced text for the log-probability comparison: ordinary prose, so the positions
# are not the near-ties of a degenerate loop.
PARAGRAPH = ("The harbor library opens at nine. Its oldest book is a ship's log from 1802, kept "
             "by a captain who sailed between the islands and the mainland. Every morning the "
             "librarian unlocks the reading room, checks the humidity, and sets out the day's "
             "newspapers. Children come after school to read picture books, while fishermen "
             "look up tide tables and old charts.")
# Bounds of the log-probability comparison against the CPU's dense f32 model, in nats.
# Dense f32 on the device differs from the CPU only in summation order.
DENSE_F32_MAX = 0.01
# The CPU's own 8-bit paths (flotilla's kernels, candle's) sit ~0.06 mean from the dense
# reference on the slimmed model (docs/GPU.md): on the CPU each must stay within this.
CPU_MEAN_MAX = 0.1
# A device path may be this many times further from the reference than the same path on the
# CPU in the same run (bf16), or than the further of the CPU's two quantized paths.
DEVICE_VS_CPU_FACTOR = 2.0


def compare_logprobs(got, ref):
    """Position-by-position comparison of two `--prompt-logprobs 1` lists of one text."""
    if len(got) != len(ref) or any(g["token_id"] != r["token_id"] for g, r in zip(got, ref)):
        raise Failure("the two runs tokenized the text differently")
    d = [abs(g["logprob"] - r["logprob"]) for g, r in zip(got, ref)]
    same = sum(g["top_logprobs"][0]["token_id"] == r["top_logprobs"][0]["token_id"]
               for g, r in zip(got, ref))
    return {"positions": len(d), "mean_abs": round(sum(d) / len(d), 5),
            "max_abs": round(max(d), 5), "same_top1": same}


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def step_losses(run_dir):
    """The training loss of every step in a run's log.jsonl, rounded."""
    losses = []
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r and "step" in r:
                losses.append(round(r["loss"], 4))
    return losses


def lora_tensors(path):
    tensors, _ = read_safetensors(path)
    out = {}
    for name, (dtype, shape, data) in tensors.items():
        if dtype == "F32":
            v = array.array("f")
            v.frombytes(data)
        elif dtype in ("F16", "BF16"):
            if dtype == "BF16":
                data = b"".join(b"\0\0" + data[i:i + 2] for i in range(0, len(data), 2))
                v = array.array("f")
                v.frombytes(data)
            else:
                v = struct.unpack(f"<{len(data) // 2}e", data)
        else:
            continue
        out[name] = v
    return out


def cmd_run(a):
    c = Check(a)
    dev = a.device
    cuda = dev.startswith("cuda")
    llm, emb = a.llm, a.embedder
    c.summary["binary"] = a.binary
    c.summary["models"] = {"llm": llm, "embedder": emb}
    manifest = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(llm))),
                            "MANIFEST.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            c.summary["manifest"] = json.load(f)

    def env_step():
        m = {"uname": " ".join(platform.uname()), "python": sys.version.split()[0],
             "binary_bytes": os.path.getsize(a.binary)}
        m["binary_sha256"] = sha256(a.binary)
        if not cuda:
            return m
        smi = shutil.which("nvidia-smi")
        if not smi:
            raise Failure("nvidia-smi is not on PATH")
        full = subprocess.run([smi], capture_output=True, text=True, timeout=60)
        c.log.write(full.stdout + full.stderr)
        q = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total,memory.used,compute_cap",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60)
        if q.returncode != 0:
            raise Failure(f"nvidia-smi exit {q.returncode}: {q.stderr.strip()[-400:]}")
        gpus = []
        for line in q.stdout.strip().splitlines():
            name, drv, tot, used, cap = [x.strip() for x in line.split(",")]
            gpus.append({"name": name, "driver": drv, "memory_total_mib": int(tot),
                         "memory_used_mib": int(used), "compute_cap": cap})
        m["gpus"] = gpus
        cuda_ver = [ln for ln in full.stdout.splitlines() if "CUDA Version" in ln]
        if cuda_ver:
            m["driver_cuda"] = cuda_ver[0].split("CUDA Version:")[1].strip(" |")
        built = (c.summary.get("manifest", {}).get("binary") or {}).get("compute_cap")
        if built and gpus:
            m["binary_compute_cap"] = built
            gpu_cap = gpus[0]["compute_cap"].replace(".", "")
            m["_checks"] = {"binary built for this GPU's compute capability":
                            built.rstrip("af") == gpu_cap}
        return m
    c.step("environment", env_step)

    def libs_step():
        c.env["LD_LIBRARY_PATH"] = library_path(a.binary, c.env)
        found, missing = ldd(a.binary, c.env)
        m = {"LD_LIBRARY_PATH": c.env["LD_LIBRARY_PATH"],
             "needed": {lib: found.get(lib, "not found")
                        for lib in needed_libs(a.binary, c.env)}}
        if missing:
            raise Failure("not found: " + ", ".join(missing) + f" ({NEEDED_HINT}; "
                          "set FLOTILLA_CUDA_LIBS to the folder that holds them)", m)
        return m
    c.step("libraries", libs_step)

    def version_step():
        return {"version": c.flotilla(["--version"], 30).strip()}
    c.step("version", version_step, needs=["libraries"])

    gen = {}

    def generate(name, device, model, prompts, max_tokens, extra=()):
        args = ["generate", "--model", model, "--device", device, "--max-tokens",
                str(max_tokens), "--output", "json", *extra]
        for p in prompts:
            args += ["--prompt", p]
        t = time.time()
        v = c.flotilla(args, a.step_timeout)
        wall = time.time() - t
        if "completions" in v:
            items, stats = v["completions"], v["stats"]
            m = {"prompts": len(items), "completion_tokens": sum(i["completion_tokens"]
                                                                 for i in items),
                 "prefill_tokens_per_s": stats.get("prefill_tokens_per_s"),
                 "decode_tokens_per_s": stats.get("decode_tokens_per_s"),
                 "token_ids": [i["token_ids"] for i in items]}
        else:
            m = {"prompts": 1, "completion_tokens": v["completion_tokens"],
                 "prompt_tokens": v["prompt_tokens"],
                 "prefill_tokens_per_s": v["prefill_tokens_per_s"],
                 "decode_tokens_per_s": v["decode_tokens_per_s"],
                 "token_ids": v["token_ids"], "text": v["text"][:200]}
        m["wall_s"] = round(wall, 2)
        gen[name] = m
        return dict(m)

    c.step("generate_quantized", lambda: generate("q", dev, llm, [PROMPT], 64),
           needs=["version"])
    c.step("generate_quantized_batch4", lambda: generate("q4", dev, llm, BATCH, 32),
           needs=["version"])

    def agree_step():
        if not cuda:
            raise Skip("cpu run: the device is the reference")
        ref = generate("cpu", "cpu", llm, [PROMPT], 64)
        a_ids, b_ids = gen["q"]["token_ids"], ref["token_ids"]
        n = common_prefix(a_ids, b_ids)
        want = min(16, len(a_ids), len(b_ids))
        return {"device_ids": a_ids, "cpu_ids": b_ids, "common_prefix": n,
                "identical": a_ids == b_ids, "cpu_decode_tokens_per_s":
                ref["decode_tokens_per_s"],
                "_checks": {f"first {want} greedy tokens agree with cpu": n >= want}}
    c.step("greedy_agreement_with_cpu", agree_step, needs=["generate_quantized"])

    def logprob_step():
        # The reference: the language model dequantized to dense f32, teacher forced on the CPU.
        dense = os.path.join(c.work, "dense-f32")
        c.flotilla(["model", "convert", llm, dense, "--dtype", "f32"], a.step_timeout)

        def score(device, model, precision="auto", env=None):
            v = c.flotilla(["generate", "--model", model, "--device", device, "--precision",
                            precision, "--prompt", PARAGRAPH, "--max-tokens", "1",
                            "--prompt-logprobs", "1", "--output", "json"], a.step_timeout, env)
            return v["prompt_logprobs"]
        ref = score("cpu", dense, "f32")
        rows = {"cpu_quantized": compare_logprobs(score("cpu", llm), ref),
                "cpu_quantized_candle": compare_logprobs(
                    score("cpu", llm, env={"FLOTILLA_KERNELS": "off"}), ref),
                "cpu_dense_bf16": compare_logprobs(score("cpu", dense, "bf16"), ref)}
        cpu_q = max(rows["cpu_quantized"]["mean_abs"], rows["cpu_quantized_candle"]["mean_abs"])
        checks = {f"cpu quantized paths within {CPU_MEAN_MAX} nats (mean) of dense f32":
                  cpu_q <= CPU_MEAN_MAX}
        if cuda:
            rows["device_dense_f32"] = compare_logprobs(score(dev, dense, "f32"), ref)
            rows["device_dense_bf16"] = compare_logprobs(score(dev, dense, "bf16"), ref)
            rows["device_quantized"] = compare_logprobs(score(dev, llm), ref)
            f = DEVICE_VS_CPU_FACTOR
            checks.update({
                f"device dense f32 within {DENSE_F32_MAX} nats (max) of the cpu":
                    rows["device_dense_f32"]["max_abs"] <= DENSE_F32_MAX,
                f"device bf16 within {f}x the cpu bf16's distance (mean)":
                    rows["device_dense_bf16"]["mean_abs"]
                    <= f * rows["cpu_dense_bf16"]["mean_abs"],
                f"device quantized within {f}x the cpu quantized paths' distance (mean)":
                    rows["device_quantized"]["mean_abs"] <= f * cpu_q,
            })
        return {"reference": "the language model dequantized to dense f32, on the cpu, "
                             "teacher forced", **rows, "_checks": checks}
    c.step("logprob_agreement", logprob_step, needs=["version"])

    def embed_step():
        def sims(device):
            v = c.flotilla(["embed", "--model", emb, "--device", device, "--similarity",
                            "--output", "json", *TEXTS], a.step_timeout)
            return v["similarity"]
        t = time.time()
        s = sims(dev)
        m = {"similarity": [[round(x, 5) for x in row] for row in s],
             "wall_s": round(time.time() - t, 2)}
        # Informational: the slim float8 MiniLM is not the real one.
        m["paraphrase_closer_than_unrelated"] = s[0][1] > s[0][3]
        checks = {"similarities are finite": all(x == x for row in s for x in row)}
        if cuda:
            ref = sims("cpu")
            diff = max(abs(x - y) for r1, r2 in zip(s, ref) for x, y in zip(r1, r2))
            m["max_abs_diff_vs_cpu"] = diff
            checks["similarities match cpu within 2e-3"] = diff < 2e-3
        m["_checks"] = checks
        return m
    c.step("embed", embed_step, needs=["version"])

    run_dir = os.path.join(c.work, "train")

    def train_step():
        cfg = os.path.join(c.work, "train.yaml")
        data = os.path.abspath(os.path.join(a.repo, "examples", "train", "en-ja-lora.jsonl"))
        with open(cfg, "w") as f:
            f.write(f"model: {json.dumps(os.path.abspath(llm))}\ndata: {json.dumps(data)}\n"
                    f"steps: {a.train_steps}\nbatch_size: 2\nmax_seq_len: 512\n"
                    "eval_every: 10\ncheckpoint_every: 10\nseed: 0\nholdout: 0.1\n"
                    "lora: {rank: 8, alpha: 16}\noptimizer: {lr: 0.002, warmup_steps: 2}\n")
        s = c.flotilla(["train", "--config", cfg, "--out", run_dir, "--device", dev,
                        "--output", "json"], a.train_timeout)
        losses = step_losses(run_dir)
        k = max(1, min(5, len(losses) // 4))
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        # Every LoRA tensor moved between the step-10 checkpoint and the end: it got a gradient.
        ckpts = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step-*")))
        final = lora_tensors(os.path.join(run_dir, "adapter", "adapter_model.safetensors"))
        moved, still = 0, []
        if len(ckpts) >= 2:
            mid = lora_tensors(os.path.join(ckpts[0], "adapter_model.safetensors"))
            for name, v in final.items():
                w = mid.get(name)
                if w is not None and any(x != y for x, y in zip(v, w)):
                    moved += 1
                else:
                    still.append(name)
        zero_b = [n for n, v in final.items() if "lora_B" in n and not any(v)]
        m = {"steps": s["steps"], "losses": losses, "eval_loss_before": s["eval_loss_before"],
             "eval_loss_after": s["eval_loss_after"], "tokens_per_second":
             s["tokens_per_second"], "seconds": s["seconds"],
             "trainable_parameters": s["trainable_parameters"],
             "lora_tensors": len(final), "lora_tensors_moved_after_step_10": moved,
             "lora_tensors_not_moved": still[:10], "zero_lora_B": zero_b[:10]}
        m["_checks"] = {
            "training loss falls": last < first,
            "held-out loss falls": (s["eval_loss_after"] or 0) < (s["eval_loss_before"] or 0),
            "every LoRA tensor gets a gradient": len(final) > 0 and not still and not zero_b
            and len(ckpts) >= 2,
        }
        return m
    c.step("train_lora_20_steps", train_step, needs=["version"])

    def qlora_step():
        # QLoRA on the packed GGUF (quantized projections on the device, one dequantized
        # weight at a time in the backward) with gradient checkpointing, in bf16 where the
        # binary's compute capability has it.
        qdir = os.path.join(c.work, "qlora")
        cfg = os.path.join(c.work, "qlora.yaml")
        data = os.path.abspath(os.path.join(a.repo, "examples", "train", "en-ja-lora.jsonl"))
        with open(cfg, "w") as f:
            f.write(f"model: {json.dumps(os.path.abspath(llm))}\ndata: {json.dumps(data)}\n"
                    "steps: 6\nbatch_size: 2\nmax_seq_len: 512\neval_every: 0\n"
                    "checkpoint_every: 0\nseed: 0\nholdout: 0.1\nqlora: true\n"
                    "gradient_checkpointing: true\nlora: {rank: 8, alpha: 16}\n"
                    "optimizer: {lr: 0.002, warmup_steps: 1}\n")
        s = c.flotilla(["train", "--config", cfg, "--out", qdir, "--device", dev,
                        "--output", "json"], a.train_timeout)
        losses = step_losses(qdir)
        final = lora_tensors(os.path.join(qdir, "adapter", "adapter_model.safetensors"))
        zero_b = [n for n, v in final.items() if "lora_B" in n and not any(v)]
        return {"steps": s["steps"], "losses": losses, "seconds": s["seconds"],
                "tokens_per_second": s["tokens_per_second"], "lora_tensors": len(final),
                "_checks": {"6 QLoRA steps": s["steps"] == 6,
                            "losses finite": bool(losses) and all(x == x for x in losses),
                            "every lora_B moved": bool(final) and not zero_b}}
    c.step("train_qlora_checkpointed", qlora_step, needs=["version"])

    adapter = os.path.join(run_dir, "adapter")
    c.step("generate_with_adapter",
           lambda: generate("adapter", dev, llm, [PROMPT], 16, ["--adapter", adapter]),
           needs=["train_lora_20_steps"])

    merged = os.path.join(c.work, "merged")

    def merge_step():
        v = c.flotilla(["adapter", "merge", "--model", llm, "--adapter", adapter, "--out", merged,
                        "--output", "json"], a.step_timeout)
        return {"merged_modules": v["merged_modules"], "files": len(v["files"]),
                "bytes": du(merged)}
    c.step("adapter_merge", merge_step, needs=["train_lora_20_steps"])
    c.step("generate_merged_dense", lambda: generate("merged", dev, merged, [PROMPT], 64),
           needs=["adapter_merge"])

    def eval_step():
        cases = os.path.join(a.repo, "examples", "benchmarks", "en-ja")
        out = os.path.join(c.work, "eval")
        v = c.flotilla(["eval", "--model", llm, "--cases", os.path.join(cases, "smoke.jsonl"),
                        "--documents", cases, "--judge", "self", "--embedder", emb,
                        "--max-tokens", "48", "--explanation-tokens", "24", "--device", dev,
                        "--out", out, "--output", "json"], a.eval_timeout)
        n = 0
        if os.path.exists(os.path.join(out, "cases.jsonl")):
            with open(os.path.join(out, "cases.jsonl")) as f:
                n = sum(1 for line in f if line.strip())
        failed = v.get("failed_cases", [])
        return {"cases": n, "failed_cases": len(failed), "failures": failed[:4],
                "_checks": {"4 cases ran": n == 4, "no case failed": not failed}}
    c.step("eval_4_cases", eval_step, needs=["version"])

    c.write()
    s = c.summary
    c.say(f"device-check: {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped "
          f"in {s['seconds']}s; summary {os.path.join(c.out, 'device-check.json')}")
    print(f"device-check: {s['passed']} passed, {s['failed']} failed")
    return 0 if s["ok"] else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="stage .device/ (binary + slim models) here")
    p.add_argument("--dest", required=True)
    p.add_argument("--binary")
    p.add_argument("--model-cache", required=True)
    p.add_argument("--llm-layers", type=int, default=4)
    p.add_argument("--embed-layers", type=int, default=2)
    p.add_argument("--embed-matrix-dtype", choices=["F8_E4M3", "F16"], default="F8_E4M3",
                   help="MiniLM's 2-D weights (vectors are always f16)")
    p.add_argument("--keep-embedding", action="store_true",
                   help="keep SmolLM2's Q8_0 token embedding (30 MB) instead of Q4_0 (16 MB)")
    p.add_argument("--max-mib", type=float, default=60)
    r = sub.add_parser("run", help="run the checks")
    r.add_argument("--binary", required=True)
    r.add_argument("--llm", required=True)
    r.add_argument("--embedder", required=True)
    r.add_argument("--device", default="cuda:0")
    r.add_argument("--out", required=True)
    r.add_argument("--repo", default=".")
    r.add_argument("--work", help="scratch folder (default: a new temp dir)")
    r.add_argument("--budget", type=float, default=420, help="seconds for all steps")
    r.add_argument("--stop-after", metavar="STEP",
                   help="skip every step after STEP (e.g. logprob_agreement)")
    r.add_argument("--step-timeout", type=float, default=90)
    r.add_argument("--train-timeout", type=float, default=180)
    r.add_argument("--eval-timeout", type=float, default=150)
    r.add_argument("--train-steps", type=int, default=20)
    a = ap.parse_args()
    if a.cmd == "pack":
        cmd_pack(a)
        return 0
    return cmd_run(a)


if __name__ == "__main__":
    sys.exit(main())
