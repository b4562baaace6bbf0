#!/usr/bin/env bash
# Byte-level comparison of what a user runs, before and after a refactor (docs/engine.md, "Same bytes
# before and after"). Checks out BEFORE and AFTER as detached worktrees under /tmp, runs on each, with
# one thread and the same Python environment:
#   (a) advprompts optimize of the waterbirds-synth-gap preset, 3 steps, seed 0, prompt seeds 0 and 1,
#       against a fixed trained task model (task.weights: the run is then deterministic on both sides);
#   (b) advprompts generate from those prompts on shard 0/100 of the benchmark's train split
#       (inpainting, the embedded inpainting model);
#   (c) advprompts generate, text to image, 4 images (embedded model);
# then cmp's every output file of one side with the same file of the other.
#
# Usage: docs/experiments/house_byte_compare.sh WEIGHTS [BEFORE] [AFTER]
#   WEIGHTS  a small_cnn state dict trained on waterbirds-synth; `advprompts experiment` writes one per
#            seed as OUT/models/base-small_cnn-s<seed>.safetensors (e.g. runs/wb/models/base-small_cnn-s0.safetensors)
#   BEFORE   default 38fda71^ (the commit before the layering refactor); AFTER default HEAD
# Env: PYTHON (default: this checkout's .venv/bin/python), WORK (default /tmp/house_compare),
#      COMPARE_ONLY=1 (compare the outputs already in WORK again, without running anything).
#
# Files that carry process state are compared too, but reported apart, each with what differs: log.csv
# (its seconds column is wall time) and the resume checkpoints (checkpoints/*.safetensors + .json hold
# the process's global numpy / python RNG states, seeded from OS entropy, so they differ between any two
# runs of one commit; before the refactor their header also listed its fields in hash order).
set -euo pipefail

weights=$(realpath "${1:?usage: $0 WEIGHTS [BEFORE] [AFTER]}")
before=${2:-38fda71^}
after=${3:-HEAD}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
python=${PYTHON:-$repo/.venv/bin/python}
work=${WORK:-/tmp/house_compare}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONHASHSEED=0

if [[ ${COMPARE_ONLY:-0} != 1 ]]; then
rm -rf "$work"
mkdir -p "$work"
for side in before after; do
    rev=${!side}
    tree="$work/tree-$side"
    git -C "$repo" worktree remove --force "$tree" 2>/dev/null || true
    git -C "$repo" worktree add --detach "$tree" "$rev" >/dev/null 2>&1
    echo "$side: $rev = $(git -C "$tree" rev-parse --short HEAD)"
done

run() {  # side, advprompts arguments...
    local side=$1; shift
    (cd "$work" && PYTHONPATH="$work/tree-$side/src" "$python" -m advprompts "$@")
}

for side in before after; do
    # Both sides write under one path ($work/run, moved to out-<side> after): metadata.csv and generate.yaml
    # name the prompt files by path.
    out="$work/run"
    rm -rf "$out"
    echo "== $side: optimize"
    # Both sides take the same flags: the refactor renamed none of optimize's or generate's (--help of both).
    run "$side" optimize -c waterbirds-synth-gap -o "$out/optimize" --set optim.steps=3 --set optim.seed=0 \
        --set 'prompt.seeds=[0, 1]' --set "task.weights=$weights" --set log.progress=false >"$work/$side.optimize.log" 2>&1
    echo "== $side: generate (inpainting from the prompts)"
    run "$side" generate -o "$out/inpaint" $(printf -- '--prompt-file %s ' "$out"/optimize/prompt_*.safetensors) \
        --source waterbirds-synth:train --model embedded-inpaint --conditioning inpaint --device cpu --steps 5 \
        --class-word waterbird=duck --class-word landbird=sparrow --shard 0/100 --seed 0 >"$work/$side.inpaint.log" 2>&1
    echo "== $side: generate (text to image)"
    run "$side" generate -o "$out/txt2img" --prompt "a bird in a forest" --num-images 4 --model embedded \
        --device cpu --steps 5 --seed 0 >"$work/$side.txt2img.log" 2>&1
    mv "$out" "$work/out-$side"
done
for side in before after; do git -C "$repo" worktree remove --force "$work/tree-$side"; done
fi

explain_checkpoint() {  # before file, after file: which parts of a resume checkpoint differ
    "$python" - "$1" "$2" <<'PY'
import json, sys
if sys.argv[1].endswith(".json"):
    a, b = (json.load(open(f)) for f in sys.argv[1:])
    print(", ".join(f"{k} {'same' if a.get(k) == b.get(k) else 'differs'}" for k in sorted(set(a) | set(b))))
else:
    from safetensors import safe_open
    from safetensors.torch import load_file
    import torch
    a, b = (load_file(f) for f in sys.argv[1:])
    parts = [f"{k} {'same' if k in a and k in b and torch.equal(a[k], b[k]) else 'differs'}"
             for k in sorted(set(a) | set(b))]
    heads = [safe_open(f, "pt").metadata() for f in sys.argv[1:]]
    print(", ".join(parts + [f"header {heads[0]} vs {heads[1]}"]))
PY
}

# Compare every file either side wrote (the lock files aside: empty, locks).
same=0; differ=0; state_same=0; state_differ=0; missing=0
while read -r rel; do
    a="$work/out-before/$rel"; b="$work/out-after/$rel"
    state=0; [[ $(basename "$rel") == log*.csv || $rel == */checkpoints/* ]] && state=1
    if [[ ! -f $a || ! -f $b ]]; then
        echo "ONLY ON ONE SIDE: $rel"; missing=$((missing + 1))
    elif cmp -s "$a" "$b"; then
        if ((state)); then state_same=$((state_same + 1)); else same=$((same + 1)); fi
    elif ((state)); then
        state_differ=$((state_differ + 1))
        if [[ $rel == */checkpoints/* ]]; then
            echo "DIFFERS (process state, resume checkpoint): $rel: $(explain_checkpoint "$a" "$b")"
        # The wall-time column (the last) aside, are the rows the same?
        elif cmp -s <(cut -d, -f1-$(($(head -1 "$a" | tr , '\n' | wc -l) - 1)) "$a") \
                    <(cut -d, -f1-$(($(head -1 "$b" | tr , '\n' | wc -l) - 1)) "$b"); then
            echo "DIFFERS (process state, wall time only; every other column identical): $rel"
        else
            echo "DIFFERS (beyond the wall-time column): $rel"; differ=$((differ + 1))
        fi
    else
        echo "DIFFERS: $rel"; differ=$((differ + 1))
    fi
done < <({ (cd "$work/out-before" && find . -type f ! -name '.advprompts*.lock'); \
           (cd "$work/out-after" && find . -type f ! -name '.advprompts*.lock'); } | sed 's|^\./||' | sort -u)

images=$(find "$work/out-after" -name '*.png' -path '*images*' | wc -l)
echo "summary: $same files identical, $differ differ, $missing on one side only ($images generated images" \
     "among them); process-state files (log.csv, checkpoints): $state_same identical, $state_differ differ"
((differ == 0 && missing == 0))
