#!/usr/bin/env python3
"""Reference tokenization and greedy generations from llama.cpp, for flotilla's tests.

Loads a GGUF model with llama-cpp-python (default settings, CPU) and, for each test prompt
in PROMPTS, records:

  prompt_ids      the prompt's token ids, from
                  ``llm.tokenize(prompt_text.encode("utf-8"), add_bos=True, special=True)``.
                  ``add_bos=True`` is llama.cpp's ``add_special``: llama.cpp only prepends BOS
                  when the vocab asks for it (GGUF key ``tokenizer.ggml.add_bos_token``), so
                  for a model whose metadata says ``false`` no BOS is added. ``special=True``
                  lets markup such as ``<|im_start|>`` in the text become its special token.
  greedy_ids      the first N ids generated greedily from the prompt: argmax of the raw
                  logits at every step (no repetition penalty, no temperature, no top-k/p),
                  cross-checked against llama.cpp's own greedy sampler
                  (``llm.sample(temp=0.0, repeat_penalty=1.0)``, which chains a no-op
                  penalties sampler and the greedy sampler). Generation stops early only at
                  EOS; the EOS id itself is NOT included in greedy_ids.
  greedy_text     greedy_ids detokenized by llama.cpp (pieces concatenated as bytes, then
                  decoded as UTF-8, invalid sequences replaced with U+FFFD), with
                  special=True so a special token would show as its text.
  stopped_at_eos  whether generation stopped because the model produced EOS.

Usage (the three fixtures in tests/fixtures/):
  python3 scripts/llamacpp_reference.py \\
      --model ~/.cache/flotilla/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --out tests/fixtures/llamacpp-smollm2.json --n-predict 32 --threads 2
  python3 scripts/llamacpp_reference.py \\
      --model ~/.cache/flotilla/models/SmolLM2-135M-Instruct.Q4_K_M.gguf \\
      --out tests/fixtures/llamacpp-smollm2-q4km.json --n-predict 32 --threads 2
  python3 scripts/llamacpp_reference.py --chat-markup gemma \\
      --model ~/.cache/flotilla/models/gemma-3-270m-Q4_K_M.gguf \\
      --out tests/fixtures/llamacpp-gemma3.json --n-predict 32 --threads 2
(scripts/make-smollm2-q4km.sh makes the SmolLM2 Q4_K_M file; scripts/fetch-models.sh the rest.)

Needs llama-cpp-python, built portable:
  CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir llama-cpp-python
(scripts/bench/vs-llamacpp.sh makes such a venv). The default -march=native build enables
llama.cpp's AMX kernels, which crash (general protection fault in llama_decode) on this
project's VMs although their CPUs advertise AMX.
The output is deterministic: two runs on the same machine give byte-identical files.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp_common import open_model  # noqa: E402

# Each case: a short name and the exact prompt text fed to the tokenizer. The last two are
# chat prompts; --chat-markup swaps them for another family's markup (CHAT_PROMPTS).
PROMPTS = [
    {"name": "english_short", "text": "The capital of France is"},
    {
        "name": "english_long",
        "text": (
            "Once upon a time, in a small village nestled between rolling hills and a quiet "
            "river, there lived an old clockmaker who repaired every clock in town but never "
            "fixed his own."
        ),
    },
    {"name": "japanese", "text": "日本の首都は東京です。富士山は"},
    {"name": "digits", "text": "In 2024, 12345 people paid $67.89 each."},
    {"name": "whitespace_code", "text": "def f(x):\n    return  x\t+ 1\n\n\nprint(f(2))"},
    {"name": "emoji", "text": "I love pizza 🍕 and 🎉 parties! 👍"},
    {"name": "mixed_punctuation", "text": "Hello,world!! (a+b)*c=42; e.g. 'x' -> \"y\"... ok?"},
    {
        "name": "chat_capital",
        "text": (
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    },
    {
        "name": "chat_arithmetic",
        "text": (
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is 2 + 2? Answer with one number.<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    },
]

# The two chat prompts in each model family's own markup (--chat-markup), same names.
CHAT_PROMPTS = {
    # ChatML (SmolLM2, Qwen2.5): SmolLM2's default system prompt, as its template writes it.
    "chatml": PROMPTS[-2:],
    # Gemma (2 and 3): no system role; Gemma's template puts a system prompt at the start of
    # the first user turn, followed by a blank line. BOS comes from the tokenizer (add_bos).
    "gemma": [
        {
            "name": "chat_capital",
            "text": (
                "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
                "<start_of_turn>model\n"
            ),
        },
        {
            "name": "chat_arithmetic",
            "text": (
                "<start_of_turn>user\nYou are a helpful assistant.\n\n"
                "What is 2 + 2? Answer with one number.<end_of_turn>\n"
                "<start_of_turn>model\n"
            ),
        },
    ],
}

TOKENIZE_CALL = 'llm.tokenize(prompt_text.encode("utf-8"), add_bos=True, special=True)'


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def last_logits(llm):
    """Logits of the last evaluated token (only that one is computed when logits_all=False)."""
    ptr = llm._ctx.get_logits_ith(-1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def greedy(llm, prompt_ids, n_predict, eos_id):
    """Greedy continuation of prompt_ids: returns (ids without EOS, stopped_at_eos)."""
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(n_predict):
        tok = int(np.argmax(last_logits(llm)))
        # llama.cpp's own greedy sampler (penalties at their neutral values) must agree.
        check = llm.sample(temp=0.0, repeat_penalty=1.0, frequency_penalty=0.0,
                           presence_penalty=0.0)
        if check != tok:
            raise RuntimeError(f"argmax {tok} != llama.cpp greedy sampler {check}")
        if tok == eos_id:
            return out, True
        out.append(tok)
        llm.eval([tok])
    return out, False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="path to the GGUF file")
    ap.add_argument("--out", required=True, help="JSON file to write ('-' for stdout)")
    ap.add_argument("--n-predict", type=int, default=32, help="tokens to generate per prompt")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for llama.cpp")
    ap.add_argument("--chat-markup", choices=sorted(CHAT_PROMPTS), default="chatml",
                    help="markup of the two chat prompts: chatml (SmolLM2, default) or gemma")
    args = ap.parse_args()
    prompts = PROMPTS[:-2] + CHAT_PROMPTS[args.chat_markup]

    llm = open_model(args.model, args.threads)
    eos_id = llm.token_eos()
    meta = llm.metadata

    cases = []
    for p in prompts:
        text = p["text"]
        prompt_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        ids, stopped = greedy(llm, prompt_ids, args.n_predict, eos_id)
        out_text = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        cases.append({
            "name": p["name"],
            "prompt_text": text,
            "prompt_ids": prompt_ids,
            "greedy_ids": ids,
            "greedy_text": out_text,
            "stopped_at_eos": stopped,
        })
        print(f"{p['name']}: {len(prompt_ids)} prompt tokens, {len(ids)} generated"
              f"{' (EOS)' if stopped else ''}", file=sys.stderr)

    doc = {
        "llama_cpp_python_version": llama_cpp.__version__,
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256_of(args.model),
        "n_predict": args.n_predict,
        "tokenize_call": TOKENIZE_CALL,
        "vocab_add_bos_token": meta.get("tokenizer.ggml.add_bos_token"),
        "bos_id": llm.token_bos(),
        "eos_id": eos_id,
        "notes": (
            "greedy = argmax of raw logits each step, no penalties; generation stops early "
            "only at EOS, which is not included in greedy_ids; greedy_text = "
            "detokenize(greedy_ids, special=True) decoded as UTF-8 (errors='replace'). "
            "Prompt evaluated in one batch (n_batch=512), then one token per eval."
        ),
        "cases": cases,
    }
    text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
