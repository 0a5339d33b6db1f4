#!/usr/bin/env python3
"""Prefill and decode throughput of llama.cpp (via llama-cpp-python, CPU) on a GGUF model.

The baseline that ``flotilla bench generate`` is compared with (scripts/bench/vs-llamacpp.sh).

Per run:
  prefill  llm.reset(); llm.eval(prompt_ids), timed: the whole prompt in one batch
           (n_batch and n_ubatch are set to at least the prompt length).
  decode   then M greedy steps, each an argmax of the last logits and a single-token
           llm.eval([tok]), timed together. EOS is not a stop here: decode always runs M steps,
           so every run does the same work.
The figures are the medians over --runs runs, after one untimed warm-up run.
Prints one JSON line:
  {"engine":"llama.cpp","prefill_tokens_per_s":..,"decode_tokens_per_s":..,
   "prompt_tokens":..,"decode_tokens":..,"threads":..}

The prompt is an English paragraph repeated and its token list truncated to --prompt-tokens.
Needs llama-cpp-python built with CMAKE_ARGS="-DGGML_NATIVE=OFF" (see vs-llamacpp.sh for why).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from llamacpp_common import open_model  # noqa: E402

PARAGRAPH = (
    "The river wound slowly through the valley, past orchards heavy with apples and fields "
    "where farmers were bringing in the last of the harvest before the autumn rains. In the "
    "village square, children chased each other around the old stone fountain while their "
    "parents traded news, bread and vegetables at the weekly market. "
)


def main():
    ap = argparse.ArgumentParser(description="llama.cpp prefill/decode benchmark")
    ap.add_argument("--model", required=True, help="path to the GGUF file")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if args.prompt_tokens < 1 or args.decode_tokens < 1 or args.runs < 1:
        ap.error("--prompt-tokens, --decode-tokens and --runs must be at least 1")

    n_batch = max(512, args.prompt_tokens)
    llm = open_model(args.model, args.threads,
                     n_ctx=max(2048, args.prompt_tokens + args.decode_tokens + 16),
                     n_batch=n_batch)
    n_vocab = llm.n_vocab()

    reps, ids = 1, []
    while len(ids) < args.prompt_tokens:
        ids = llm.tokenize((PARAGRAPH * reps).encode(), add_bos=True, special=False)
        reps *= 2
    prompt_ids = ids[: args.prompt_tokens]

    def next_token():
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
        return int(np.argmax(logits))

    def one_run():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt_ids)
        t1 = time.perf_counter()
        tok = next_token()
        t2 = time.perf_counter()
        for _ in range(args.decode_tokens):
            llm.eval([tok])
            tok = next_token()
        t3 = time.perf_counter()
        return len(prompt_ids) / (t1 - t0), args.decode_tokens / (t3 - t2)

    one_run()  # warm-up: page in the weights, size the compute buffers
    prefill, decode = zip(*(one_run() for _ in range(args.runs)))
    print(json.dumps({
        "engine": "llama.cpp",
        "prefill_tokens_per_s": round(statistics.median(prefill), 2),
        "decode_tokens_per_s": round(statistics.median(decode), 2),
        "prompt_tokens": len(prompt_ids),
        "decode_tokens": args.decode_tokens,
        "threads": args.threads,
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
