#!/usr/bin/env python3
"""Requantizes a GGUF file with llama.cpp's own quantizer, and summarises GGUF files.

  llamacpp_quantize.py quantize IN OUT [--ftype Q4_K_M] [--threads N]
      llama_cpp.llama_model_quantize(IN, OUT, params) with allow_requantize=True (IN may
      already be quantized: llama.cpp dequantizes each tensor and quantizes it again), so the
      result has llama.cpp's own choice of per-tensor types for that ftype. OUT is written as
      OUT.part and renamed once complete. Needs llama-cpp-python (scripts/bench/vs-llamacpp.sh
      makes a portable venv).
  llamacpp_quantize.py summary FILE
      Counts tensors per ggml type, and per type the tensor names with the layer index folded
      (``blk.*.ffn_down: Q6_K in 9 layers``). Pure Python, reads the GGUF header only; it
      needs neither llama-cpp-python nor the ``gguf`` package.
"""

import argparse
import collections
import os
import re
import struct
import sys

# ggml_type ids (ggml.h).
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}

# GGUF metadata value types: struct format of the scalar ones.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}


class _Reader:
    def __init__(self, f):
        self.f = f

    def unpack(self, fmt):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def string(self):
        n = self.unpack("<Q")
        return self.f.read(n).decode("utf-8", errors="replace")

    def value(self, vtype):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype = self.unpack("<I")
            n = self.unpack("<Q")
            return [self.value(etype) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_header(path):
    """(metadata dict, [(tensor name, shape, ggml type name)]) of a GGUF file."""
    with open(path, "rb") as f:
        r = _Reader(f)
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = r.unpack("<I")
        n_tensors = r.unpack("<Q")
        n_kv = r.unpack("<Q")
        meta = {"GGUF.version": version}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
            ttype = r.unpack("<I")
            r.unpack("<Q")  # data offset
            tensors.append((name, dims, GGML_TYPES.get(ttype, f"type{ttype}")))
    return meta, tensors


def summary(path, out=sys.stdout):
    meta, tensors = read_gguf_header(path)
    by_type = collections.Counter(t for _, _, t in tensors)
    print(f"{os.path.basename(path)}: {len(tensors)} tensors, general.file_type="
          f"{meta.get('general.file_type')}", file=out)
    print("  per type: " + ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())), file=out)
    # (folded name, type) -> layer count
    groups = collections.OrderedDict()
    for name, _, ttype in tensors:
        folded = re.sub(r"^blk\.\d+\.", "blk.*.", name)
        groups[(folded, ttype)] = groups.get((folded, ttype), 0) + 1
    for ttype in sorted(by_type):
        parts = []
        for (folded, t), n in groups.items():
            if t != ttype:
                continue
            if folded.startswith("blk.*."):
                parts.append(f"{folded} in {n} layer{'s' if n != 1 else ''}")
            else:
                parts.append(folded)
        print(f"  {ttype}: " + "; ".join(parts), file=out)


def quantize(src, dst, ftype_name, threads):
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads
    tmp = dst + ".part"
    if os.path.exists(tmp):
        os.remove(tmp)
    rc = llama_cpp.llama_model_quantize(src.encode("utf-8"), tmp.encode("utf-8"),
                                        ctypes.byref(params))
    if rc != 0:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise SystemExit(f"llama_model_quantize failed ({rc})")
    os.replace(tmp, dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize", help="requantize IN into OUT with llama.cpp")
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("--ftype", default="Q4_K_M", help="llama_ftype suffix (default Q4_K_M)")
    q.add_argument("--threads", type=int, default=0, help="0: llama.cpp's default")
    s = sub.add_parser("summary", help="tensor counts per ggml type of a GGUF file")
    s.add_argument("file")
    args = ap.parse_args()
    if args.cmd == "quantize":
        quantize(args.src, args.dst, args.ftype, args.threads)
    else:
        summary(args.file)


if __name__ == "__main__":
    main()
