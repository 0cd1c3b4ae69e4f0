#!/usr/bin/env bash
# The first time a GPU is at hand: one script, everything side by side in one call of at most 9.5 minutes (every
# step has its own time limit, together under the device tool's 10 minutes a command).
#
#   benchmarks/gpu_check.sh --prepare MRI_DATA     # here, before: the small data copy and the wheels to carry
#   benchmarks/gpu_check.sh DATA [OLD_SRC] [OUT]   # on the GPU machine
#
# DATA: the MRI set, or a copy of it with the long side cut to 256 px at JPEG quality 90 (about 49 MB: what fits
# in a device machine's carry). OLD_SRC: the `src` folder of an older commit, to time its study beside this one's
# (`mkdir gpu-old; git archive COMMIT src | tar -x -C gpu-old`; pass gpu-old/src). OUT: default gpu-check-out.
#
# --prepare writes gpu-data/mri (that copy, from MRI_DATA) and gpu-wheels/ (cnnlab's pure-Python dependencies, which
# a bare GPU machine with torch may lack; it has no internet). All three folders are git-ignored: name gpu-data,
# gpu-wheels and gpu-old (if any) in the device tool's `carry`. cnnlab itself runs from this tree's src/ (PYTHONPATH),
# the wheels from OUT/pylib; a missing module is named before anything runs.
#
# 1. nvidia-smi and torch's view of the card;
# 2. the tests marked gpu (`pytest -m gpu`);
# 3. benchmarks/epoch_speed.py on CUDA (cnnlab's pipeline only: the assignment's runs on the CPU), with the
#    network's FLOPs an image, hence the achieved TFLOP/s;
# 4. one run alone, and the same run beside three others in a `--jobs 4` study on the card: histories compared;
# 5. `cnnlab study assignment --set device=cuda` with this tree, and with OLD_SRC when given, each timed from start
#    to exit, with the GPU's utilisation sampled every half second (nvidia-smi) while it runs: mean and peak,
#    and the sum of the runs' own training loops (history.csv epoch_s) against the wall clock.
# Every figure lands in OUT/summary.txt, the raw outputs beside it.
set -uo pipefail
PY=${PYTHON:-python}
if [ "${1:-}" = "" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,25p' "$0"
    exit 2
fi
if [ "$1" = "--prepare" ]; then
    [ -d "${2:-}" ] || { echo "gpu_check.sh --prepare: give the MRI set's folder" >&2; exit 2; }
    $PY - "$2" gpu-data/mri <<'EOF' || exit 1
import sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
n = 0
for p in sorted(src.rglob("*.jpg")):
    q = dst / p.relative_to(src)
    q.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(p).convert("RGB")
    im.thumbnail((256, 256))
    im.save(q, quality=90)
    n += 1
size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
print(f"{dst}: {n} images, {size / 2**20:.1f} MiB")
EOF
    $PY -m pip download --quiet --no-deps --only-binary :all: -d gpu-wheels tomli-w platformdirs click tqdm \
        pytest pluggy iniconfig packaging pygments || exit 1
    ls gpu-wheels
    exit 0
fi
DATA=$1
OLD_SRC=${2:-}
OUT=${3:-gpu-check-out}
# DEVICE=cpu CHECK_SETS="--set epochs=2" runs the same steps on the CPU: how the script itself is
# tested where there is no GPU (the figures then mean nothing).
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
# cnnlab from this tree; of the carried wheels, those whose module the machine lacks, beside it (a module it has is
# never shadowed)
LIB="$(cd "$OUT" && pwd)/pylib"
for wheel in gpu-wheels/*.whl; do
    [ -e "$wheel" ] || continue
    module=$(basename "$wheel"); module=${module%%-*}
    $PY -c "import $module" 2> /dev/null ||
        $PY -m pip install --quiet --no-index --no-deps --target "$LIB" "$wheel" || exit 1
done
export PYTHONPATH="$PWD/src:$LIB${PYTHONPATH:+:$PYTHONPATH}"
$PY - <<'EOF' || exit 1
import importlib.util, sys
needed = "torch torchvision numpy PIL sklearn scipy matplotlib pandas click tqdm tomli_w platformdirs cnnlab"
missing = [m for m in needed.split() if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check.sh: missing here: {', '.join(missing)} (carry their wheels in gpu-wheels/)")
EOF
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
export CNNLAB_CACHE="$OUT/cache"
SETS=(--set "device=$DEVICE")
read -r -a EXTRA <<< "${CHECK_SETS:-}"
SETS+=("${EXTRA[@]}")
smi() { command -v nvidia-smi > /dev/null && nvidia-smi "$@"; }

say "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'), device $DEVICE ${CHECK_SETS:-}"
smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee -a "$SUMMARY"

say "== gpu tests"
if $PY -c "import pytest" 2> /dev/null; then
    timeout 45 $PY -m pytest -m gpu tests -q -p no:cacheprovider > "$OUT/gpu-tests.txt" 2>&1
    say "pytest -m gpu: exit $? ($(tail -1 "$OUT/gpu-tests.txt"))"
else
    say "pytest -m gpu: skipped, no pytest here (carry its wheels: --prepare downloads them)"
fi

say "== epoch_speed.py on $DEVICE"
timeout 45 $PY benchmarks/epoch_speed.py --data "$DATA" --limit 150 --skip-seed "${SETS[@]}" --json \
    > "$OUT/epoch_speed.json" 2> "$OUT/epoch_speed.err"
$PY - "$OUT/epoch_speed.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"epoch_speed failed: {e}")
tflops = r["cnnlab_gflop_per_s"] / 1000
print(f"epoch_speed: {r['cnnlab_s_per_epoch']:.3f} s an epoch of {r['images']} images, "
      f"{r['cnnlab_images_per_s']:.0f} images/s, {r['gflop_per_image']:.3f} GFLOP an image: {tflops:.2f} TFLOP/s")
EOF

say "== one run alone and beside three others on the same card (regularization study, --jobs 4, 3 epochs)"
timeout 75 $PY -m cnnlab study regularization --data "$DATA" --out "$OUT/shared" --epochs 3 --jobs 4 "${SETS[@]}" \
    > "$OUT/shared.log" 2>&1 &&
    timeout 40 $PY -m cnnlab train --config "$OUT/shared/runs/simple-bn-dropout/config.toml" --data "$DATA" \
        --out "$OUT/alone" > "$OUT/alone.log" 2>&1
say "study and train: exit $?"
$PY - "$OUT/alone/history.csv" "$OUT/shared/runs/simple-bn-dropout/history.csv" <<'EOF' | tee -a "$SUMMARY"
import csv, sys
try:
    alone, shared = ([r for r in csv.DictReader(open(p))] for p in sys.argv[1:3])
except OSError as e:
    sys.exit(f"no histories to compare: {e}")
for key in ("train_loss", "val_loss", "val_f1"):
    a, b = [float(r[key]) for r in alone], [float(r[key]) for r in shared]
    rel = max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=float("nan"))
    print(f"{key}: alone {a} beside others {b}: {'identical' if a == b else f'max relative difference {rel:.2e}'}")
EOF

study() {  # NAME PYTHONPATH
    local name=$1 path=$2 util="$OUT/util-$1.csv"
    smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$util" &
    local sampler=$!
    local t0; t0=$(date +%s.%N)
    PYTHONPATH="$path:$LIB" timeout 180 $PY -m cnnlab study assignment --data "$DATA" "${SETS[@]}" \
        --out "$OUT/study-$name" > "$OUT/study-$name.log" 2>&1
    local rc=$?
    local t1; t1=$(date +%s.%N)
    kill "$sampler" 2>/dev/null
    $PY - "$name" "$rc" "$t0" "$t1" "$util" "$OUT/study-$name" <<'EOF' | tee -a "$SUMMARY"
import csv, sys
from pathlib import Path
name, rc, t0, t1, util, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], Path(sys.argv[6])
u = [float(x) for x in Path(util).read_text().split() if x.replace(".", "").isdigit()]
loops = sum(float(r["epoch_s"]) for h in out.rglob("history.csv") for r in csv.DictReader(open(h)))
busy = f"GPU busy mean {sum(u) / len(u):.0f}% peak {max(u):.0f}%" if u else "GPU busy not sampled"
print(f"study {name}: exit {rc}, wall {t1 - t0:.1f} s, runs' loops {loops:.1f} s, {busy}")
EOF
}

say "== cnnlab study assignment ${SETS[*]}"
study new "$PWD/src"
if [ -n "$OLD_SRC" ]; then
    study old "$OLD_SRC"
fi
say "== done: $SUMMARY"
