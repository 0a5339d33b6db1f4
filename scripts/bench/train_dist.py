#!/usr/bin/env python3
"""Distributed LoRA training, measured: one worker vs sync data-parallel vs DiLoCo (H = 10, 50)
on the same data and token budget, through `flotilla run --workers N` (a real coordinator and
N in-process workers talking gRPC over loopback). Called by scripts/bench/train-dist.sh.

Per run it reads results.json's `training` section: bytes the workers uploaded (gradients,
deltas, the initial adapter) and downloaded (global adapters), the final adapter's held-out
loss, tokens and wall time. Then it states what the bytes would cost on a 1 Gb/s office LAN
for the LoRA of a 3B model (Llama-3.2-3B's shapes), from tensor sizes alone.

The token budget: one worker and sync run STEPS optimizer steps of GRAD_ACCUM micro-batches;
DiLoCo's W workers run STEPS / W inner steps each on their own micro-batches, so every run
trains on STEPS x GRAD_ACCUM micro-batches of the same seeded stream.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def synthetic(n, path):
    """n short chat examples of one pattern (seeded, fixed): a small task whose held-out loss
    falls as the format and the vocabulary are learnt, cheap enough for hundreds of steps."""
    import random
    rng = random.Random(11)
    names = ["Aiko", "Bram", "Chen", "Dara", "Emil", "Fumi", "Goran", "Hana", "Ines", "Jun",
             "Kofi", "Lena", "Mika", "Noor", "Otto", "Pia", "Quinn", "Rui", "Sven", "Tomo"]
    things = ["bicycle", "kettle", "umbrella", "lantern", "scarf", "teapot", "boat", "kite"]
    colours = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple"]
    with open(path, "w") as f:
        for _ in range(n):
            who, what, col = rng.choice(names), rng.choice(things), rng.choice(colours)
            q = f"What colour is {who}'s {what}?"
            a = f"{who}'s {what} is {col}."
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")


def train_block(a, steps, distributed):
    block = {
        "data": "train.jsonl",
        "steps": steps,
        "batch_size": 1,
        "grad_accum": a.grad_accum,
        "max_seq_len": a.max_seq_len,
        "holdout": 0.2,
        "eval_every": 0,
        "checkpoint_every": 0,
        "seed": 7,
        "lora": {"rank": a.rank, "alpha": 2 * a.rank, "target_modules": ["q_proj", "v_proj"]},
        "optimizer": {"lr": a.lr, "warmup_steps": max(1, steps // 20)},
    }
    if distributed:
        block["distributed"] = distributed
    return block


def run(a, name, workers, block):
    work = os.path.join(a.work, name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    if a.data:
        shutil.copy(a.data, os.path.join(work, "train.jsonl"))
    else:
        synthetic(a.synthetic, os.path.join(work, "train.jsonl"))
    sweep = os.path.join(work, "sweep.yaml")
    with open(sweep, "w") as f:
        # JSON is YAML: the train block goes in as one JSON value.
        f.write(f"name: {name}\nseed: 7\nmodels: [{a.model}]\n")
        f.write(f"adapters:\n  - name: lora\n    train: {json.dumps(block)}\n")
    cmd = [a.flotilla, "--threads", str(a.threads), "run", sweep, "--workers", str(workers),
           "--output", "json", "--out", os.path.join(work, "out")]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"{name}: flotilla run failed ({p.returncode}):\n{p.stderr[-4000:]}")
    with open(os.path.join(work, "out", "results.json")) as f:
        t = json.load(f)["training"][0]
    t["name"] = name
    t["process_wall_s"] = round(wall, 1)
    return t


def lan_estimate(workers):
    """Bytes of one LoRA contribution for Llama-3.2-3B's shapes, and its cost on 1 Gb/s."""
    hidden, layers, kv, inter = 3072, 28, 1024, 8192
    shapes = {  # (in, out) of each projection
        "q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    link = 1e9 / 8  # bytes/s
    out = []
    for targets, rank in ((("q_proj", "v_proj"), 8), (tuple(shapes), 16)):
        params = layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)
        for enc, width in (("f32", 4), ("fp16", 2), ("int8", 1)):
            size = params * width
            # Every worker uploads one contribution and downloads the adapter (f32) per
            # round, all through the coordinator's one link.
            per_round = workers * (size + params * 4) / link
            out.append({
                "targets": "q,v" if len(targets) == 2 else "all 7", "rank": rank,
                "params": params, "encoding": enc, "contribution_mb": round(size / 1e6, 2),
                "sync_s_per_step": round(per_round, 3),
                "diloco_h50_s_per_step": round(per_round / 50, 4),
            })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flotilla", required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=None,
                    help="chat JSONL to train on (e.g. examples/train/en-ja-lora.jsonl with "
                         "--max-seq-len 512); default: --synthetic short examples")
    ap.add_argument("--synthetic", type=int, default=240)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--h", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--compression", default="none")
    ap.add_argument("--outer-lr", type=float, default=0.7)
    ap.add_argument("--outer-momentum", type=float, default=0.9)
    ap.add_argument("--diloco-only", action="store_true",
                    help="skip the one-worker and sync runs (outer-optimizer ablations)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/flotilla-train-dist")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    w = a.workers
    if a.steps % w:
        sys.exit(f"--steps {a.steps} must be a multiple of --workers {w} (the same token budget)")
    runs = []
    if not a.diloco_only:
        runs.append(run(a, "single", 1, train_block(a, a.steps, None)))
        runs.append(run(a, "sync", w, train_block(a, a.steps, {
            "mode": "sync", "workers": w, "compression": a.compression})))
    for h in a.h:
        runs.append(run(a, f"diloco-h{h}", w, train_block(a, a.steps // w, {
            "mode": "diloco", "workers": w, "inner_steps": h, "compression": a.compression,
            "outer_lr": a.outer_lr, "outer_momentum": a.outer_momentum})))
    sync = next((r for r in runs if r["mode"] == "sync"), None)
    sync_bytes = sync["bytes_sent"] + sync["bytes_received"] if sync else 0
    rows = []
    for r in runs:
        total = r["bytes_sent"] + r["bytes_received"]
        rows.append({
            "run": r["name"], "mode": r["mode"], "workers": len(r["workers"]), "steps": r["steps"],
            "rounds": r["rounds"], "bytes_sent": r["bytes_sent"], "bytes_received": r["bytes_received"],
            "bytes_per_step": round(total / a.steps) if r["mode"] != "single" else 0,
            "bytes_vs_sync": round(sync_bytes / total, 1) if sync and total and r["mode"] != "single" else None,
            "heldout_loss": r["heldout_loss"],
            "heldout_vs_sync_pct": round(100 * (r["heldout_loss"] / sync["heldout_loss"] - 1), 2)
            if sync and r["heldout_loss"] and sync["heldout_loss"] else None,
            "tokens": r["tokens"], "wall_s": round(r["wall_s"], 1),
            "tokens_per_s": round(r["tokens"] / r["wall_s"], 1) if r["wall_s"] else None,
        })
    report = {
        "data": a.data or f"synthetic:{a.synthetic}", "model": a.model, "steps": a.steps, "workers": w, "grad_accum": a.grad_accum,
        "rank": a.rank, "compression": a.compression, "threads": a.threads,
        "outer_lr": a.outer_lr, "outer_momentum": a.outer_momentum,
        "loadavg": os.getloadavg(), "runs": rows, "lan_1gbps_3b": lan_estimate(max(w, 4)),
    }
    print("| run | workers | steps | rounds | sent | received | bytes/step | fewer bytes than sync | held-out loss | vs sync | tokens/s | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['workers']} | {r['steps']} | {r['rounds']} | {r['bytes_sent']} | "
              f"{r['bytes_received']} | {r['bytes_per_step']} | {r['bytes_vs_sync'] or '-'}x | "
              f"{r['heldout_loss']:.4f} | {r['heldout_vs_sync_pct'] if r['heldout_vs_sync_pct'] is not None else '-'}% | "
              f"{r['tokens_per_s']} | {r['wall_s']} |")
    print()
    print("3B LoRA (Llama-3.2-3B shapes) over 1 Gb/s, 4 workers, per optimizer step:")
    for e in report["lan_1gbps_3b"]:
        print(f"  r={e['rank']} on {e['targets']}: {e['params']} params, {e['encoding']} "
              f"{e['contribution_mb']} MB a contribution: sync {e['sync_s_per_step']} s, "
              f"diloco H=50 {e['diloco_h50_s_per_step']} s")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
