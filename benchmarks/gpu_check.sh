#!/usr/bin/env bash
# The first time a GPU is at hand: one script, at most 8 minutes, everything side by side in one call.
#
#   benchmarks/gpu_check.sh DATA [OLD_SRC] [OUT]
#
# DATA: the MRI set, or a copy of it with the long side cut to 256 px at JPEG quality 90 (about 49 MB: what fits
# in a device machine's carry; make it with `python benchmarks/gpu_check.sh --help` below). OLD_SRC: the `src`
# folder of an older commit, to time its study beside this one's (`git archive COMMIT src | tar -x -C old`, then
# pass old/src). OUT: where the figures go (default gpu-check-out).
#
# 1. nvidia-smi and torch's view of the card;
# 2. the tests marked gpu (`pytest -m gpu`);
# 3. benchmarks/epoch_speed.py on CUDA (cnnlab's pipeline only: the assignment's runs on the CPU), with the
#    network's FLOPs an image, hence the achieved TFLOP/s;
# 4. `cnnlab study assignment --set device=cuda` with this tree, and with OLD_SRC when given, each timed from start
#    to exit, with the GPU's utilisation sampled every half second (nvidia-smi) while it runs: mean and peak,
#    and the sum of the runs' own training loops (history.csv epoch_s) against the wall clock.
# Every figure lands in OUT/summary.txt, the raw outputs beside it.
#
# Making the small copy of the MRI set (on the machine that has ../shared):
#   python - <<'EOF'
#   from pathlib import Path; from PIL import Image
#   src, dst = Path("../shared/datasets/brain-tumor-mri"), Path("gpu-data/mri")
#   for p in src.rglob("*.jpg"):
#       q = dst / p.relative_to(src); q.parent.mkdir(parents=True, exist_ok=True)
#       im = Image.open(p).convert("RGB"); im.thumbnail((256, 256)); im.save(q, quality=90)
#   EOF
set -uo pipefail
if [ "${1:-}" = "" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,27p' "$0"
    exit 2
fi
DATA=$1
OLD_SRC=${2:-}
OUT=${3:-gpu-check-out}
PY=${PYTHON:-python}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
export CNNLAB_CACHE="$OUT/cache"

say "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee -a "$SUMMARY"

say "== gpu tests"
timeout 120 $PY -m pytest -m gpu tests -q -p no:cacheprovider > "$OUT/gpu-tests.txt" 2>&1
say "pytest -m gpu: exit $? ($(tail -1 "$OUT/gpu-tests.txt"))"

say "== epoch_speed.py on CUDA"
timeout 120 $PY benchmarks/epoch_speed.py --data "$DATA" --limit 150 --skip-seed --set device=cuda --json \
    > "$OUT/epoch_speed.json" 2> "$OUT/epoch_speed.err"
$PY - "$OUT/epoch_speed.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"epoch_speed failed: {e}")
tflops = r["cnnlab_gflop_per_s"] / 1000
print(f"epoch_speed on CUDA: {r['cnnlab_s_per_epoch']:.3f} s an epoch of {r['images']} images, "
      f"{r['cnnlab_images_per_s']:.0f} images/s, {r['gflop_per_image']:.3f} GFLOP an image: {tflops:.2f} TFLOP/s")
EOF

study() {  # NAME PYTHONPATH
    local name=$1 path=$2 util="$OUT/util-$1.csv"
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$util" &
    local smi=$!
    local t0; t0=$(date +%s.%N)
    PYTHONPATH="$path" timeout 240 $PY -m cnnlab study assignment --data "$DATA" --set device=cuda \
        --out "$OUT/study-$name" > "$OUT/study-$name.log" 2>&1
    local rc=$?
    local t1; t1=$(date +%s.%N)
    kill "$smi" 2>/dev/null
    $PY - "$name" "$rc" "$t0" "$t1" "$util" "$OUT/study-$name" <<'EOF' | tee -a "$SUMMARY"
import csv, sys
from pathlib import Path
name, rc, t0, t1, util, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], Path(sys.argv[6])
u = [float(x) for x in Path(util).read_text().split() if x.replace(".", "").isdigit()]
loops = sum(float(r["epoch_s"]) for h in out.rglob("history.csv") for r in csv.DictReader(open(h)))
print(f"study {name}: exit {rc}, wall {t1 - t0:.1f} s, runs' loops {loops:.1f} s, "
      f"GPU busy mean {sum(u) / max(len(u), 1):.0f}% peak {max(u, default=0):.0f}%")
EOF
}

say "== cnnlab study assignment --set device=cuda"
study new "$PWD/src"
if [ -n "$OLD_SRC" ]; then
    study old "$OLD_SRC"
fi
say "== done: $SUMMARY"
