#!/usr/bin/env bash
# The main job: set up, get Fashion-MNIST (Debian package, where the machine allows it), render the
# mixed-sample grid, train each method on the real Fashion-MNIST CPU recipe and print a comparison.
#
#   bash scripts/main.sh        # vanilla, mixup, cutmix, AutoMix, SAMix, 30 epochs (about 25 min on 2 cores)
#   SAMIX_MAIN_METHODS="vanilla mixup cutmix" bash scripts/main.sh   # the static three only (about 10 min)
#   SAMIX_MAIN_EPOCHS=80 bash scripts/main.sh   # the full low-data recipe of docs/results.md
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh

if [ ! -f data/FashionMNIST/raw/train-images-idx3-ubyte ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[samix] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
  fi
fi

OUT="${SAMIX_MAIN_OUT:-runs/main}"
EPOCHS="${SAMIX_MAIN_EPOCHS:-30}"
METHODS="${SAMIX_MAIN_METHODS:-vanilla mixup cutmix automix samix}"
mkdir -p "$OUT"
"$PY" -m samix.cli show --out "$OUT/mixing_grid.png"
dirs=()
for m in $METHODS; do
  echo "[samix] training $m on Fashion-MNIST ($EPOCHS epochs, 2,000 images)"
  # resume=true: a re-run continues an interrupted run and skips finished ones
  "$PY" -m samix.cli train "configs/fashion_mnist/$m.yaml" "epochs=$EPOCHS" "out_dir=$OUT/$m" \
      "name=$m" eval_interval=5 resume=true log_interval=1000
  dirs+=("$OUT/$m")
done
echo
echo "Fashion-MNIST, 2,000 training images, ${EPOCHS} epochs, 10,000 test images (top-1 %, median of the last epochs):"
"$PY" -m samix.cli compare "${dirs[@]}"
echo
echo "PNGs: $OUT/mixing_grid.png and, per run, $OUT/<method>/curves.png, $OUT/<method>/reliability.png;"
echo "      learned masks for lam 0..1: $OUT/automix/masks/ and $OUT/samix/masks/"
