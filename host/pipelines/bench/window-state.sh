#!/usr/bin/env bash
# Window state larger than memory: a word count over a 30-batch window
# (sliding every 10) of long-tailed keys, with and without an inverse, each
# with state-memory = 16MiB (partials spill) and 2GiB (nothing spills), under
# /usr/bin/time (peak RSS, CPU). Prints each run's summary; checks that the
# spilling and the in-memory runs emit the same records.
#   host/pipelines/bench/window-state.sh [files] [lines per file]
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
files="${1:-40}" lines="${2:-500000}"
work="${WEIR_BENCH_DIR:-$root/target/bench-window-state}"
mkdir -p "$work"
cd "$root"
cargo build --release -p weir --bin weir
weir="$root/target/release/weir"
"$weir" plugin build plugins/split-words
plugin="$root/target/wasm32-wasip2/release/split_words.wasm"
if [ ! -f "$work/in/.done-$files-$lines" ]; then
    rm -rf "$work/in"
    python3 - "$work/in" "$files" "$lines" <<'PY'
import os, random, sys
# One key per line and a digit, the key's rank log-uniform over 3,000,000:
# most keys rare, a few frequent.
out, files, lines = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(7)
os.makedirs(out, exist_ok=True)
for f in range(files):
    rows = [f"key-{int(3_000_000 ** random.random()):07d} {random.randint(0, 9)}" for _ in range(lines)]
    open(os.path.join(out, f"f{f:03d}.txt"), "w").write("\n".join(rows) + "\n")
PY
    touch "$work/in/.done-$files-$lines"
fi
for inverse in false true; do
    for memory in 16MiB 2GiB; do
        name="w-$inverse-$memory"
        rm -rf "$work/$name"
        mkdir -p "$work/$name"
        cat > "$work/$name/pipeline.toml" <<TOML
[pipeline]
name = "$name"
batch-interval = "1s"
partitions = 2
clock = "deterministic"
checkpoint-dir = "checkpoints"

[checkpoint]
every-batches = 1

[plugins]
split-words = "$plugin"

[[source]]
name = "lines"
type = "files"
path = "$work/in"
max-files-per-batch = 1

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key-and-window"
reducer = "count"
length = "30s"
slide = "10s"
$( [ "$inverse" = true ] && echo 'inverse = true' )
state-memory = "$memory"

[[sink]]
input = "counts"
type = "files"
path = "out"
TOML
        echo "== inverse = $inverse, state-memory = $memory"
        /usr/bin/time -v "$weir" run --available-now "$work/$name/pipeline.toml" \
            2> "$work/$name/log" > /dev/null
        grep -E "^pipeline|checkpoints written|stage .counts|Maximum resident|User time|System time" \
            "$work/$name/log"
        find "$work/$name/out" -type f | sort | xargs -r cat | sort | md5sum > "$work/$name/digest"
    done
    if ! cmp -s "$work/w-$inverse-16MiB/digest" "$work/w-$inverse-2GiB/digest"; then
        echo "inverse = $inverse: the spilling run emitted other records than the in-memory one" >&2
        exit 1
    fi
done
