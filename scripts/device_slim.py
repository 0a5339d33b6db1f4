"""Slimmed copies of the demo models for the device check (standard library only): SmolLM2's
GGUF cut to its first blocks (token embedding optionally requantized Q8_0 -> Q4_0), MiniLM's
safetensors cut to its first layers with float8 e4m3 matrices. Used by device_check.py's
`pack`; see its docstring.
"""

import array
import json
import os
import shutil
import struct
import sys

# ----------------------------------------------------------------------------------------------
# GGUF: read the header, keep the first N blocks, optionally requantize the token embedding.

GGUF_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
               12: "d"}
GGML_Q8_0, GGML_Q4_0 = 8, 2


class Reader:
    def __init__(self, f):
        self.f = f

    def read(self, fmt):
        n = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.f.read(n))

    def string(self):
        (n,) = self.read("Q")
        return self.f.read(n).decode("utf-8")

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.read("IQ")
            return [self.value(et) for _ in range(n)]
        return self.read(GGUF_SCALAR[t])[0]


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def slim_gguf(src, dst, layers, requant_embedding):
    """Write `dst`: `src` with only blocks 0..layers-1 (and block_count set to match)."""
    with open(src, "rb") as f:
        r = Reader(f)
        magic, version = r.read("4sI")
        if magic != b"GGUF" or version not in (2, 3):
            raise SystemExit(f"{src}: not a GGUF v2/v3 file")
        n_tensors, n_kv = r.read("QQ")
        kv = []  # (key, raw bytes of type + value)
        arch, alignment, blocks = None, 32, None
        for _ in range(n_kv):
            key = r.string()
            start = f.tell()
            (t,) = r.read("I")
            v = r.value(t)
            end = f.tell()
            f.seek(start)
            raw = f.read(end - start)
            kv.append((key, t, raw))
            if key == "general.architecture":
                arch = v
            elif key == "general.alignment":
                alignment = v
            elif key.endswith(".block_count"):
                blocks = v
        infos = []
        for _ in range(n_tensors):
            name = r.string()
            (nd,) = r.read("I")
            dims = r.read("Q" * nd)
            (ty,) = r.read("I")
            (off,) = r.read("Q")
            infos.append((name, dims, ty, off))
        data_start = (f.tell() + alignment - 1) // alignment * alignment
        file_len = os.fstat(f.fileno()).st_size
        if blocks is None or layers >= blocks:
            raise SystemExit(f"{src}: has {blocks} blocks; asked to keep {layers}")
        order = sorted(infos, key=lambda i: i[3])
        size = {}
        for a, b in zip(order, order[1:] + [None]):
            size[a[0]] = (b[3] if b else file_len - data_start) - a[3]

        def keep(name):
            if not name.startswith("blk."):
                return True
            return int(name.split(".")[1]) < layers

        kept = [i for i in infos if keep(i[0])]
        payload = {}
        for name, dims, ty, off in kept:
            f.seek(data_start + off)
            data = f.read(size[name])
            if name == "token_embd.weight" and requant_embedding and ty == GGML_Q8_0:
                data, ty = q8_0_to_q4_0(data, dims), GGML_Q4_0
            payload[name] = (dims, ty, data)

    out = bytearray()
    out += struct.pack("<4sIQQ", b"GGUF", version, len(kept), len(kv))
    for key, t, raw in kv:
        out += gguf_string(key)
        if key == f"{arch}.block_count":
            out += struct.pack("<I", t) + struct.pack("<" + GGUF_SCALAR[t], layers)
        else:
            out += raw
    offsets, pos = {}, 0
    for name, _, _, _ in kept:
        offsets[name] = pos
        pos += (len(payload[name][2]) + alignment - 1) // alignment * alignment
    for name, _, _, _ in kept:
        dims, ty, _ = payload[name]
        out += gguf_string(name) + struct.pack("<I", len(dims))
        out += struct.pack("<" + "Q" * len(dims), *dims) + struct.pack("<IQ", ty, offsets[name])
    out += b"\0" * ((-len(out)) % alignment)
    tmp = dst + ".part"
    with open(tmp, "wb") as g:
        g.write(out)
        for name, _, _, _ in kept:
            data = payload[name][2]
            g.write(data)
            g.write(b"\0" * ((-len(data)) % alignment))
    os.replace(tmp, dst)


def q8_0_to_q4_0(data, dims):
    """Requantize Q8_0 blocks (f16 d, 32 x i8) to Q4_0 (f16 d, 16 bytes of nibbles), as ggml's
    quantize_row_q4_0 does: d = max-magnitude value / -8, q = round(x / d) + 8 in 0..15."""
    n = 1
    for d in dims:
        n *= d
    blocks = n // 32
    out = bytearray(blocks * 18)
    mv = memoryview(data)
    for b in range(blocks):
        base = b * 34
        (d8,) = struct.unpack_from("<e", mv, base)
        qs = struct.unpack_from("<32b", mv, base + 2)
        amax, mx = 0, 0
        for q in qs:
            if abs(q) > amax:
                amax, mx = abs(q), q
        d = d8 * mx / -8.0
        inv = 1.0 / d if d else 0.0
        f8 = d8 * inv
        o = b * 18
        struct.pack_into("<e", out, o, d)
        for j in range(16):
            lo = min(15, int(qs[j] * f8 + 8.5))
            hi = min(15, int(qs[j + 16] * f8 + 8.5))
            out[o + 2 + j] = lo | (hi << 4)
    return bytes(out)


# ----------------------------------------------------------------------------------------------
# safetensors: read, keep the first N encoder layers, write f16.

def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        meta = header.pop("__metadata__", None)
        tensors = {}
        for name, info in header.items():
            a, b = info["data_offsets"]
            f.seek(base + a)
            tensors[name] = (info["dtype"], info["shape"], f.read(b - a))
    return tensors, meta


def write_safetensors(path, tensors, meta=None):
    header, pos = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(data)]}
        pos += len(data)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, (_, _, data) in tensors.items():
            f.write(data)
    os.replace(tmp, path)


def f32_to_f16(data):
    a = array.array("f")
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return struct.pack(f"<{len(a)}e", *a)


_F8_TABLE = None


def f8_table():
    """f16 bit pattern -> float8 e4m3fn byte (round to nearest, ties to even; saturating at
    448; NaN stays NaN), for the 65536 f16 values."""
    global _F8_TABLE
    if _F8_TABLE is None:
        import bisect
        pos = []  # (value, code) for the 127 finite non-negative e4m3fn codes, ascending
        for code in range(0x7F):
            e, m = code >> 3, code & 7
            v = (m / 8) * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
            pos.append((v, code))
        vals = [v for v, _ in pos]
        table = bytearray(65536)
        for h in range(65536):
            (x,) = struct.unpack("<e", struct.pack("<H", h))
            sign = 0x80 if h & 0x8000 else 0
            if x != x:
                table[h] = 0x7F | sign
                continue
            a = min(abs(x), 448.0)
            i = bisect.bisect_left(vals, a)
            if i == 0:
                code = pos[0][1]
            elif i == len(vals):
                code = pos[-1][1]
            else:
                lo, hi = pos[i - 1], pos[i]
                if a - lo[0] < hi[0] - a or (a - lo[0] == hi[0] - a and lo[1] % 2 == 0):
                    code = lo[1]
                else:
                    code = hi[1]
                if hi[0] == a:
                    code = hi[1]
            table[h] = code | sign
        _F8_TABLE = bytes(table)
    return _F8_TABLE


def f32_to_f8(data):
    half = array.array("H")
    half.frombytes(f32_to_f16(data))
    if sys.byteorder != "little":
        half.byteswap()
    return bytes(map(f8_table().__getitem__, half))


def slim_bert(src, dst, layers, matrix_dtype="F8_E4M3"):
    os.makedirs(dst, exist_ok=True)
    for entry in os.listdir(src):
        s = os.path.join(src, entry)
        if entry in ("model.safetensors", "config.json") or not os.path.isfile(s):
            if os.path.isdir(s) and not os.path.exists(os.path.join(dst, entry)):
                shutil.copytree(s, os.path.join(dst, entry))
            continue
        shutil.copy(s, os.path.join(dst, entry))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    have = config["num_hidden_layers"]
    if layers > have:
        raise SystemExit(f"{src}: has {have} layers; asked to keep {layers}")
    config["num_hidden_layers"] = layers
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tensors, meta = read_safetensors(os.path.join(src, "model.safetensors"))
    out = {}
    for name, (dtype, shape, data) in tensors.items():
        parts = name.split(".")
        if "layer" in parts:
            i = parts.index("layer")
            if parts[i - 1] == "encoder" and int(parts[i + 1]) >= layers:
                continue
        if dtype == "F32" and len(shape) == 2 and matrix_dtype == "F8_E4M3":
            dtype, data = "F8_E4M3", f32_to_f8(data)
        elif dtype == "F32":
            dtype, data = "F16", f32_to_f16(data)
        out[name] = (dtype, shape, data)
    write_safetensors(os.path.join(dst, "model.safetensors"), out, meta)
