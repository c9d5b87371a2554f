#!/usr/bin/env bash
# Weir against a store some milliseconds away: moto (tests/moto/install)
# behind a loopback proxy that delays each response by DELAY_MS (default 30).
#   host/pipelines/bench/s3-latency.sh [weir binary ...]
#   WHAT=checkpoints host/pipelines/bench/s3-latency.sh [weir binary ...]
# WHAT=sink (the default): the files sink on s3://, 40 batches of a word
# count over 8 partitions, timed with /usr/bin/time; each run's batches are
# then counted back in the bucket.
# WHAT=checkpoints: the same 40 batches counted in three windows, with
# checkpoint-dir on s3:// and a checkpoint after every batch; prints how
# many were written and their durations (mean, max), from the run's log.
# Give two binaries (a build before and after a change) to compare them in
# one run, alternating, twice each.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
delay="${DELAY_MS:-30}"
what="${WHAT:-sink}"
work="${WEIR_BENCH_DIR:-$root/target/bench-s3-latency}"
cd "$root"
tests/moto/install >/dev/null
if [ "$#" -eq 0 ]; then
    cargo build --release -p weir --bin weir
    set -- "$root/target/release/weir"
fi
"$1" plugin build plugins/split-words >/dev/null
plugin="$root/target/wasm32-wasip2/release/split_words.wasm"
rm -rf "$work" && mkdir -p "$work/in"
python3 - "$work/in" <<'PY'
import random, sys
random.seed(3)
words = [f"w{i}" for i in range(5000)]
for f in range(40):
    with open(f"{sys.argv[1]}/f{f:03}.txt", "w") as out:
        out.writelines(" ".join(random.choice(words) for _ in range(8)) + "\n" for _ in range(2000))
PY
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
moto_port=$(free_port) proxy_port=$(free_port)
venv="$root/target/moto/venv"
"$venv/bin/moto_server" -p "$moto_port" >"$work/moto.log" 2>&1 &
moto=$!
python3 "$(dirname "$0")/delay_proxy.py" "$proxy_port" "$moto_port" "$delay" &
proxy=$!
trap 'kill $moto $proxy 2>/dev/null || true' EXIT
sleep 2
"$venv/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$moto_port', aws_access_key_id='b', aws_secret_access_key='b', region_name='us-east-1').create_bucket(Bucket='bench')"
run=0
for round in 1 2; do
    for weir in "$@"; do
        run=$((run + 1))
        store="endpoint = \"http://127.0.0.1:$proxy_port\"
access-key-id = \"b\"
secret-access-key = \"b\""
        if [ "$what" = checkpoints ]; then
            checkpointed="checkpoint-dir = \"s3://bench/run$run\"

[checkpoint]
every-batches = 1
$store"
            windows=""
            for length in 30 60 90; do
                windows="$windows
[[stage]]
name = \"counts-$length\"
input = \"words\"
op = \"reduce-by-key-and-window\"
reducer = \"count\"
length = \"${length}s\"
slide = \"10s\"
inverse = true

[[sink]]
input = \"counts-$length\"
type = \"files\"
path = \"$work/out$run-$length\"
"
            done
        else
            checkpointed=""
            windows="
[[stage]]
name = \"counts\"
input = \"words\"
op = \"reduce-by-key\"
reducer = \"count\"

[[sink]]
input = \"counts\"
type = \"files\"
path = \"s3://bench/run$run\"
$store"
        fi
        cat > "$work/run$run.toml" <<TOML
[pipeline]
name = "s3-latency"
batch-interval = "200ms"
partitions = 8
$checkpointed

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
$windows
TOML
        /usr/bin/time -f "$weir: %e s wall, %U s user, %M kB peak RSS" \
            "$weir" run --available-now "$work/run$run.toml" >/dev/null 2>"$work/run$run.log" || {
            tail -5 "$work/run$run.log"; exit 1; }
        tail -1 "$work/run$run.log"
        if [ "$what" = checkpoints ]; then
            python3 - "$work/run$run.log" <<'PY'
import re, sys
log = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1]).read()).splitlines()
lines = [l for l in log if "checkpoint written" in l]
ms = [float(m.group(1)) for l in lines if (m := re.search(r"(?<![_a-z])ms=([0-9.]+)", l))]
print(f"  checkpoints written: {len(ms)}, each {', '.join(f'{m:.0f}' for m in ms)} ms")
print(*(l for l in log if "checkpoints written," in l))
PY
            continue
        fi
        "$venv/bin/python" -c "
import boto3
s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:$moto_port', aws_access_key_id='b', aws_secret_access_key='b', region_name='us-east-1')
keys = [o['Key'] for p in s3.get_paginator('list_objects_v2').paginate(Bucket='bench', Prefix='run$run/') for o in p.get('Contents', [])]
print('  batches committed:', sum(k.endswith('/_manifest.json') for k in keys))"
    done
done
