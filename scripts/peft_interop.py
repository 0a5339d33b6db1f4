#!/usr/bin/env python3
"""PEFT interoperability checks for flotilla's LoRA adapters (issue 4).

Run with the PyTorch + transformers + PEFT peer venv (../shared/peer/peft/setup_peft_peer.sh):

  # 1. the committed fixture: a PEFT-made adapter and PEFT's greedy generations with it
  flotilla model convert smollm2 /tmp/smollm2-hf          # f32 HF directory of the demo model
  $PY scripts/peft_interop.py make-fixture --hf-dir /tmp/smollm2-hf

  # 2. a flotilla-made adapter must load in PEFT and generate as flotilla does
  $PY scripts/peft_interop.py check-flotilla-adapter OUT/adapter --hf-dir /tmp/smollm2-hf \
      --flotilla target/debug/flotilla --json-out report.json

make-fixture writes tests/fixtures/peft-smollm2-adapter/ (adapter_config.json +
adapter_model.safetensors, bf16, ~0.7 MB) and tests/fixtures/peft-smollm2-generations.json.
The adapter is PEFT's own LoRA (r=4 on q_proj and v_proj, r=2 on down_proj via rank_pattern,
one layer-specific alpha_pattern entry), A as PEFT initialises it, B seeded Gaussian instead of
zero so that the adapter changes what the model says. The generations are recorded from the
adapter as reloaded from disk (PeftModel.from_pretrained), i.e. from exactly the bytes
committed. tests/tests/peft.rs checks flotilla against them.

check-flotilla-adapter loads the HF base plus the adapter with PeftModel.from_pretrained,
checks every tensor of adapter_model.safetensors landed in a LoRA layer unchanged, and
compares PEFT's greedy ids with `flotilla generate --model HFDIR --adapter DIR --output json`
(and the base model's, without adapter, for reference). Prints a JSON report; exit status 1 if
a generation diverges at a point that is not a near-tie in PEFT's own logits.
"""
import argparse
import json
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
ADAPTER_NAME = "peft-smollm2-adapter"
GENERATIONS_NAME = "peft-smollm2-generations.json"

# (name, text, chat): chat prompts are rendered with the model's chat template as one user turn
# (add_generation_prompt), and the rendered text is what is recorded and tokenized.
PROMPTS = [
    ("en_capital", "The capital of France is", False),
    ("en_story", "Once upon a time, in a small village by the sea,", False),
    ("ja_fuji", "日本で一番高い山は", False),
    ("chat_rivers", "Name three rivers in Europe.", True),
    ("chat_ja", "東京について一文で説明してください。", True),
]
NEW_TOKENS = 24
# Logit gap under which two candidates count as tied (f32 vs f32: different summation orders
# move SmolLM2's logits by ~1e-4; the bf16 adapter is upcast exactly on both sides).
NEAR_TIE = 0.05


def torch_setup(threads):
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    return torch


def load_base(hf_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    return tok, model


def render(tok, text, chat):
    if not chat:
        return text
    return tok.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def eos_ids(model):
    e = model.generation_config.eos_token_id
    if e is None:
        return []
    return list(e) if isinstance(e, (list, tuple)) else [e]


def greedy(model, ids, new_tokens, stop_ids):
    """Greedy decoding by hand (one full forward per step, no KV cache tricks), recording the
    gap between the chosen token's logit and the runner-up's at every step."""
    import torch

    seq = list(ids)
    out, gaps = [], []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
            top2 = torch.topk(logits, 2)
            nxt = int(top2.indices[0])
            out.append(nxt)
            gaps.append(float(top2.values[0] - top2.values[1]))
            seq.append(nxt)
            if nxt in stop_ids:
                break
    return out, gaps


def last_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits[0, -1].float()


def top5(logits):
    import torch

    t = torch.topk(logits, 5)
    return [int(i) for i in t.indices], [round(float(v), 5) for v in t.values]


def check_loaded(peft_model, adapter_dir):
    """Every tensor in adapter_model.safetensors must sit, unchanged, in a LoRA layer of the
    PEFT model (PEFT only warns about keys it could not place)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = dict(peft_model.named_parameters())
    missing, differ = [], []
    for k, v in saved.items():
        # base_model.model.X.lora_A.weight -> base_model.model.X.lora_A.default.weight
        head, tail = k.rsplit(".", 1)
        name = f"{head}.default.{tail}"
        p = params.get(name)
        if p is None:
            missing.append(k)
        elif not torch.equal(p.detach().cpu().float(), v.float()):
            differ.append(k)
    lora_params = [n for n in params if ".lora_A." in n or ".lora_B." in n]
    return {
        "tensors_in_file": len(saved),
        "lora_params_in_model": len(lora_params),
        "file_dtypes": sorted({str(v.dtype).replace("torch.", "") for v in saved.values()}),
        "not_placed": missing,
        "placed_but_different": differ,
        "ok": not missing and not differ and len(lora_params) == len(saved),
    }


# ---------------------------------------------------------------------------------------------
# make-fixture


def make_fixture(args):
    torch = torch_setup(args.threads)
    from peft import LoraConfig, PeftModel, get_peft_model

    tok, base = load_base(args.hf_dir)
    torch.manual_seed(args.seed)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        bias="none",
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 2},
        # A layer-specific alpha (flotilla must match the module path the way PEFT does).
        alpha_pattern={"layers.5.self_attn.v_proj": 16},
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * args.b_std)
            if ".lora_A." in name or ".lora_B." in name:
                # Stored as bf16 (half the size); keep the model's copy equal to the stored one.
                p.copy_(p.to(torch.bfloat16).float())
                p.data = p.data.to(torch.bfloat16)
    pm.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    out_dir = os.path.join(args.out, ADAPTER_NAME)
    pm.save_pretrained(out_dir, safe_serialization=True)
    # Drop PEFT's README.md model card: it is boilerplate.
    card = os.path.join(out_dir, "README.md")
    if os.path.exists(card):
        os.remove(card)
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"adapter saved to {out_dir} ({size} bytes): {sorted(os.listdir(out_dir))}", file=sys.stderr)

    # Reload from disk, as a user would, and generate with what was committed.
    del pm
    tok, base = load_base(args.hf_dir)
    pm = PeftModel.from_pretrained(base, out_dir)
    pm.eval()
    load = check_loaded(pm, out_dir)
    if not load["ok"]:
        raise SystemExit(f"reloaded adapter differs from the saved one: {load}")
    stop = eos_ids(base)
    cases = []
    for name, text, chat in PROMPTS:
        prompt = render(tok, text, chat)
        ids = tok(prompt, add_special_tokens=True).input_ids
        gen, gaps = greedy(pm, ids, NEW_TOKENS, stop)
        t5_ids, t5_vals = top5(last_logits(pm, ids))
        with pm.disable_adapter():
            base_gen, _ = greedy(pm, ids, NEW_TOKENS, stop)
            b5_ids, _ = top5(last_logits(pm, ids))
        cases.append(
            {
                "name": name,
                "chat": chat,
                "prompt_text": prompt,
                "prompt_ids": ids,
                "greedy_ids": gen,
                "greedy_text": tok.decode(gen),
                "greedy_gaps": [round(x, 4) for x in gaps],
                "top5_ids": t5_ids,
                "top5_logits": t5_vals,
                "base_greedy_ids": base_gen,
                "base_greedy_text": tok.decode(base_gen),
                "base_top5_ids": b5_ids,
            }
        )
        print(
            f"{name}: adapter {tok.decode(gen)!r}\n{'':{len(name)}}  base    {tok.decode(base_gen)!r}",
            file=sys.stderr,
        )
    import peft
    import transformers

    doc = {
        "about": (
            "PEFT's greedy generations (do_sample=False, one full forward per step, f32) on "
            "flotilla's f32 HF conversion of SmolLM2-135M-Instruct.Q4_1.gguf, with the adapter "
            f"in {ADAPTER_NAME}/ loaded by PeftModel.from_pretrained (and without it: base_*). "
            "greedy_gaps: top-1 minus top-2 logit at each step. top5_*: the next-token logits "
            "after the prompt. Made by scripts/peft_interop.py make-fixture."
        ),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "seed": args.seed,
        "b_std": args.b_std,
        "max_new_tokens": NEW_TOKENS,
        "eos_ids": stop,
        "lora": {
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "target_modules": sorted(cfg.target_modules),
            "rank_pattern": cfg.rank_pattern,
            "alpha_pattern": cfg.alpha_pattern,
        },
        "cases": cases,
    }
    path = os.path.join(args.out, GENERATIONS_NAME)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# check-flotilla-adapter


def flotilla_generate(binary, hf_dir, adapter, text, chat, threads):
    cmd = [binary, "generate", "--model", hf_dir, "--prompt", text, "--max-tokens", str(NEW_TOKENS),
           "--output", "json", "--threads", str(threads)]
    if chat:
        cmd.append("--chat")
    if adapter:
        cmd += ["--adapter", adapter]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def compare(peft_ids, fl_ids, model, prompt_ids):
    """Leading agreement, and PEFT's logit gap between its token and flotilla's at the first
    divergence (small = near-tie, large = a real mismatch)."""
    agree = 0
    for a, b in zip(peft_ids, fl_ids):
        if a != b:
            break
        agree += 1
    possible = min(len(peft_ids), len(fl_ids))
    row = {"agree": agree, "possible": possible, "peft_len": len(peft_ids), "flotilla_len": len(fl_ids)}
    if agree < possible:
        logits = last_logits(model, list(prompt_ids) + list(peft_ids[:agree]))
        row["first_divergence"] = agree
        row["peft_token"] = peft_ids[agree]
        row["flotilla_token"] = fl_ids[agree]
        row["peft_gap_at_divergence"] = round(float(logits[peft_ids[agree]] - logits[fl_ids[agree]]), 5)
        row["near_tie"] = row["peft_gap_at_divergence"] <= NEAR_TIE
    return row


def check_flotilla_adapter(args):
    torch = torch_setup(args.threads)
    from peft import PeftModel

    adapter = os.path.abspath(args.adapter)
    hf_dir = os.path.abspath(args.hf_dir)
    with open(os.path.join(adapter, "adapter_config.json")) as fh:
        acfg = json.load(fh)
    tok, base = load_base(hf_dir)
    pm = PeftModel.from_pretrained(base, adapter)
    pm.eval()
    load = check_loaded(pm, adapter)
    stop = eos_ids(base)
    report = {
        "adapter": adapter,
        "hf_dir": hf_dir,
        "adapter_config": {k: acfg.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora", "peft_type", "task_type")},
        "peft_load": load,
        "cases": [],
    }
    ok = load["ok"]
    for name, text, chat in PROMPTS:
        prompt = render(tok, text, chat)
        ids = tok(prompt, add_special_tokens=True).input_ids
        peft_ids, _ = greedy(pm, ids, NEW_TOKENS, stop)
        with pm.disable_adapter():
            peft_base_ids, _ = greedy(pm, ids, NEW_TOKENS, stop)
        fl = flotilla_generate(args.flotilla, hf_dir, adapter, text, chat, args.threads)
        fl_base = flotilla_generate(args.flotilla, hf_dir, None, text, chat, args.threads)
        row = {
            "name": name,
            "prompt_tokens": {"peft": len(ids), "flotilla": fl.get("prompt_tokens")},
            "peft_ids": peft_ids,
            "flotilla_ids": fl["token_ids"],
            "peft_text": tok.decode(peft_ids),
            "flotilla_text": fl.get("text"),
            "adapter": compare(peft_ids, fl["token_ids"], pm, ids),
        }
        with pm.disable_adapter():
            row["base"] = compare(peft_base_ids, fl_base["token_ids"], pm, ids)
        row["adapter_changes_peft_output"] = peft_ids != peft_base_ids
        for part in ("adapter", "base"):
            r = row[part]
            if r["agree"] < r["possible"] and not r.get("near_tie"):
                ok = False
        if len(ids) != fl.get("prompt_tokens"):
            ok = False
        report["cases"].append(row)
        print(f"{name}: adapter {row['adapter']['agree']}/{row['adapter']['possible']}, "
              f"base {row['base']['agree']}/{row['base']['possible']}", file=sys.stderr)
    n = len(report["cases"])
    report["summary"] = {
        "prompts": n,
        "adapter_full_matches": sum(1 for c in report["cases"] if c["adapter"]["agree"] == c["adapter"]["possible"] and c["adapter"]["peft_len"] == c["adapter"]["flotilla_len"]),
        "base_full_matches": sum(1 for c in report["cases"] if c["base"]["agree"] == c["base"]["possible"] and c["base"]["peft_len"] == c["base"]["flotilla_len"]),
        "adapter_tokens_agreeing": sum(c["adapter"]["agree"] for c in report["cases"]),
        "adapter_tokens_compared": sum(c["adapter"]["possible"] for c in report["cases"]),
        "adapter_changes_output_on": sum(1 for c in report["cases"] if c["adapter_changes_peft_output"]),
        "ok": ok,
    }
    text = json.dumps(report, ensure_ascii=False, indent=1)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-fixture", help="write the PEFT adapter fixture and PEFT's generations")
    m.add_argument("--hf-dir", required=True, help="flotilla's f32 HF conversion of the demo GGUF")
    m.add_argument("--out", default=FIXTURES)
    m.add_argument("--seed", type=int, default=4)
    m.add_argument("--b-std", type=float, default=0.02, help="std of the seeded Gaussian B")
    m.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("check-flotilla-adapter", help="load a flotilla adapter in PEFT and compare generations")
    c.add_argument("adapter")
    c.add_argument("--hf-dir", required=True)
    c.add_argument("--flotilla", default=os.path.join(REPO, "target", "release", "flotilla"))
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--json-out")
    args = ap.parse_args()
    if args.cmd == "make-fixture":
        return make_fixture(args)
    return check_flotilla_adapter(args)


if __name__ == "__main__":
    sys.exit(main())
