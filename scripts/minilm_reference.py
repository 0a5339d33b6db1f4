#!/usr/bin/env python3
"""Reference sentence embeddings from sentence-transformers, for flotilla's embedding tests.

Loads an all-MiniLM-L6-v2 model directory with the real sentence-transformers library
(``SentenceTransformer(DIR, device="cpu")``, offline: HF_HUB_OFFLINE=1 and
TRANSFORMERS_OFFLINE=1 are set before import) and encodes the fixed list SENTENCES with
``normalize_embeddings=True``. The pipeline that flotilla has to reproduce is the model's
modules.json: BERT (6 layers, hidden 384) -> mean pooling over the attention mask ->
L2 normalisation.

The JSON written to --out holds:

  sentence_transformers_version, torch_version, transformers_version, tokenizers_version
  model            "all-MiniLM-L6-v2"
  max_seq_length   the model's max_seq_length as sentence-transformers sees it (256, from
                   sentence_bert_config.json). NOTE: tokenizer.json itself carries a
                   truncation of 128 and a fixed padding of 128; sentence-transformers
                   overrides both (pads to the longest in the batch, truncates at
                   max_seq_length), so a Rust port that loads tokenizer.json directly must
                   disable its padding/truncation and truncate at 256 itself.
  sentences        the input texts, in order
  embeddings       one list of 384 floats per sentence (rounded to 6 decimals), L2-normalised
  token_ids        per sentence, the ids the model actually sees: ``model.tokenize([s])``
                   ([CLS] ... [SEP], truncated at max_seq_length, no padding). These equal
                   ``model.tokenizer(s, add_special_tokens=True)`` except for the
                   truncation; the last sentence is deliberately longer than 256 tokens so
                   the truncation path is covered.
  untruncated_token_count  per sentence, len(model.tokenizer(s)["input_ids"]) without
                   truncation (with special tokens)

The tokenizer is uncased: BertNormalizer lowercases (tokenizer.json "lowercase": true;
sentence_bert_config's do_lower_case=false only means sentence-transformers adds no extra
lowercasing of its own). CJK characters are split into single-character tokens.

Usage:
  python3 scripts/minilm_reference.py \\
      --model ~/.cache/flotilla/models/all-MiniLM-L6-v2 \\
      --out tests/fixtures/minilm-reference.json

Needs torch + sentence-transformers (e.g. the CPU venv from shared/peer/peft/setup_peft_peer.sh
plus ``pip install sentence-transformers``). Prints the pairwise cosine similarity matrix as a
sanity check. The embeddings are computed in one batch (sentence-transformers' default
batching); results are deterministic on a given machine.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# ~40-word sentence (well under max_seq_length)
LONG = (
    "After three years of careful planning, the small coastal town finally opened its new "
    "public library, which offers thousands of books, quiet reading rooms, free internet "
    "access, weekly language classes for adults, and a bright play area where children can "
    "listen to stories every Saturday morning."
)

# > 256 word-piece tokens, to exercise truncation at max_seq_length (NOT at tokenizer.json's 128)
VERY_LONG = " ".join(
    f"Sentence number {i} describes how the river flows gently past the old stone mill."
    for i in range(1, 21)
)

SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a mat.",
    "Quarterly revenue grew by twelve percent.",
    "東京は日本の首都です。",
    LONG,
    "Hello, WORLD! Ünïcödé àccents and    extra   spaces.",
    "",
    VERY_LONG,
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="sentence-transformers model directory")
    ap.add_argument("--out", required=True, help="output JSON file")
    args = ap.parse_args()

    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(os.path.expanduser(args.model), device="cpu")
    model.eval()
    print(model, file=sys.stderr)

    emb = model.encode(
        SENTENCES,
        normalize_embeddings=True,
        convert_to_numpy=True,
        batch_size=32,
        show_progress_bar=False,
    )
    emb = np.asarray(emb, dtype=np.float64)
    assert emb.shape == (len(SENTENCES), 384), emb.shape

    token_ids = []
    untruncated = []
    for s in SENTENCES:
        feats = model.tokenize([s])
        ids = feats["input_ids"][0]
        mask = feats["attention_mask"][0]
        token_ids.append([int(t) for t, m in zip(ids.tolist(), mask.tolist()) if m])
        untruncated.append(len(model.tokenizer(s, add_special_tokens=True)["input_ids"]))

    out = {
        "sentence_transformers_version": sentence_transformers.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": int(model.max_seq_length),
        "sentences": SENTENCES,
        "embeddings": [[round(float(x), 6) for x in row] for row in emb],
        "token_ids": token_ids,
        "untruncated_token_count": untruncated,
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")

    norms = np.linalg.norm(emb, axis=1)
    sims = emb @ emb.T / np.outer(norms, norms)
    print(f"versions: sentence-transformers {out['sentence_transformers_version']}, "
          f"torch {out['torch_version']}, transformers {out['transformers_version']}, "
          f"tokenizers {out['tokenizers_version']}; max_seq_length {out['max_seq_length']}")
    print("norms:", " ".join(f"{n:.6f}" for n in norms))
    print("token counts (used / untruncated):",
          " ".join(f"{len(t)}/{u}" for t, u in zip(token_ids, untruncated)))
    print("cosine similarity matrix:")
    print("      " + " ".join(f"{j:>6d}" for j in range(len(SENTENCES))))
    for i in range(len(SENTENCES)):
        print(f"{i:>4d}  " + " ".join(f"{sims[i, j]:6.3f}" for j in range(len(SENTENCES))))
    for i, s in enumerate(SENTENCES):
        print(f"  [{i}] {s[:70]!r}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
