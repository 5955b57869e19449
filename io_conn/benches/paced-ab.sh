#!/usr/bin/env bash
# Paced A/B for the spin gate (docs/BENCHMARKS.md "Adaptive spinning"): 1 000 connections,
# open loop at RATE requests/s of `BURN 300` (loadgen, latency from the intended send time),
# against two servers of this build started side by side, `io_conn --spawn-md 2`, dumb listener:
# A with io_conn.spin = md.spin = "0s", B with the shipped budgets, C (if SIDES has it) the
# shipped budgets with SHMSRV_SPIN_IGNORE_LOAD=1 (the gate without its contention signal: what
# backoff alone does on a machine loaded by others). ROUNDS rounds alternating the order
# (A,B,C then C,B,A); per run: achieved rate, p50/p99, doorbells per reply (io_conn's + md's, from
# viewstats) and CPU time per reply of io_conn + its md children (/proc/PID/stat).
#
# MODE=ping instead: closed loop `PING` (one request in flight per connection, the PING bench's
# client) with CONNS connections against `--spawn-md MDS` (1 then), no rate.
#
#   cargo build --release -p io_conn -p md -p loadgen -p viewstats --bins
#   RATE=8000 DUR=10s ROUNDS=3 io_conn/benches/paced-ab.sh
#   MODE=ping MDS=1 CONNS=1 DUR=5s ROUNDS=3 io_conn/benches/paced-ab.sh
set -euo pipefail
BIN=${BIN:-target/release}
RATE=${RATE:-8000}
DUR=${DUR:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-1000}
SIDES=${SIDES:-A B C}
MODE=${MODE:-paced}
MDS=${MDS:-2}
if [ "$MODE" = ping ]; then
  load=(-r PING -e PONG)
else
  load=(--rate "$RATE" -r 'BURN 300' -e 'RESULT 45150')
fi
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
ulimit -n 20000

start() { # side port spinline [env]
  local name="pab$$$1"
  cat >"$tmp/$1.toml" <<EOF
[shared]
name = "$name"
runtime_dir = "$tmp/$1.run"
[io_conn]
$3
[[io_conn.listener]]
address = "127.0.0.1:$2"
service = "dumb"
dispatch = "flow"
[md]
$3
EOF
  env ${4:-} "$BIN/io_conn" --config "$tmp/$1.toml" --spawn-md "$MDS" >/dev/null 2>"$tmp/$1.log" &
  pids+=($!)
  eval "pid_$1=$!"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server $1 did not start" >&2; cat "$tmp/$1.log" >&2; exit 1
}

ticks() { # io_conn pid and its children: utime + stime
  local t=0 p
  for p in $1 $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' /proc/"$p"/stat)))
  done
  echo "$t"
}

bells() { # side
  "$BIN/viewstats" --json --config "$tmp/$1.toml" | python3 -c '
import json, sys
v = json.load(sys.stdin)["sections"]
print(sum(b["values"].get("doorbells", 0) for s in ("in.producer", "out.producer") for b in v.get(s, [])))'
}

base=$((20000 + RANDOM % 20000))
start A "$base" 'spin = "0s"'
start B "$((base + 1))" ''
case $SIDES in *C*) start C "$((base + 2))" '' SHMSRV_SPIN_IGNORE_LOAD=1 ;; esac
sleep 1
hz=$(getconf CLK_TCK)
echo "$MODE A/B: $CONNS conns, ${load[*]}, $DUR, $MDS md; A = spin 0s, B = shipped spin, C = B without the contention signal; $(nproc) CPUs; loadavg $(cut -d' ' -f1-4 /proc/loadavg); $(date -u +%FT%TZ)"
for r in $(seq "$ROUNDS"); do
  order=$SIDES; [ $((r % 2)) -eq 0 ] && order=$(echo "$SIDES" | rev)
  for side in $order; do
    pid=$(eval echo "\$pid_$side")
    case $side in A) port=$base ;; B) port=$((base + 1)) ;; C) port=$((base + 2)) ;; esac
    t0=$(ticks "$pid"); b0=$(bells "$side")
    out=$("$BIN/loadgen" "127.0.0.1:$port" -c "$CONNS" "${load[@]}" -t "$DUR" --warmup 1s --json)
    t1=$(ticks "$pid"); b1=$(bells "$side")
    python3 - "$side" "$r" "$out" "$((t1 - t0))" "$((b1 - b0))" "$hz" "$(cut -d' ' -f4 /proc/loadavg)" <<'EOF'
import json, sys
side, r, out, ticks, bells, hz, la = sys.argv[1:]
j = json.loads(out)
n = j.get("replies", 0); secs = j.get("secs", 1)
lat = j.get("latency_us", {})
print(f"round {r} {side}: {n/secs:8.0f} replies/s  p50 {lat.get('p50', float('nan')):8.0f} us  p99 {lat.get('p99', float('nan')):8.0f} us"
      f"  cpu {int(ticks)*1e6/int(hz)/max(n,1):6.1f} us/reply (whole run incl. warmup)  bells {int(bells)/max(n,1):.3f}/reply"
      f"  errors {j.get('errors', 0)} wrong {j.get('wrong', 0)}  procs_running {la}")
EOF
  done
done
