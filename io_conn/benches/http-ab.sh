#!/usr/bin/env bash
# One measured wrk run against our http service, per request: CPU time and context switches of
# io_conn and its md children (`perf stat --per-thread -e task-clock,context-switches,
# raw_syscalls:sys_enter`, software events: no PMU needed in a VM), system calls, frames md read,
# DRAINED frames and doorbells (viewstats deltas over the same window). Throughput on a shared
# machine is noise; these ratios are what to compare between builds (docs/BENCHMARKS.md, "HTTP").
#
#   io_conn/benches/http-ab.sh LABEL BINDIR CONFIG MDS CONNS SECONDS
#   # e.g. old against new, interleaved:
#   for r in 1 2 3; do for b in /tmp/old target/release; do
#     io_conn/benches/http-ab.sh $b $b bench.toml 2 100 4; done; done
#
# CONFIG: one http listener on 127.0.0.1:$PORT (default 28181) with the `dispatch` to measure
# (a listener table without `dispatch` is "flow"). BINDIR holds io_conn and md (spawned by
# `--spawn-md MDS`); viewstats comes from VIEWSTATS (default target/release/viewstats).
# Prints one line: rps, req, cpu_us, cs, sysc (per request, perf window = the wrk run + 0.2 s),
# mdframes, drained, bells, mdwake (per request io_conn sent), load, ms_by_thread.
set -u
LABEL=$1 BIN=$2 CFG=$3 MDS=$4 C=$5 DUR=$6
VS=${VIEWSTATS:-target/release/viewstats}
PORT=${PORT:-28181}
(exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && { echo "$LABEL: port $PORT already in use"; exit 1; }
D=$(mktemp -d /tmp/http-ab.XXXXXX)
"$BIN/io_conn" --config "$CFG" --spawn-md "$MDS" > "$D/srv.log" 2>&1 & SRV=$!
cleanup() { kill -TERM $SRV 2>/dev/null; for _ in $(seq 50); do kill -0 $SRV 2>/dev/null || break; sleep 0.1; done; kill -KILL $SRV 2>/dev/null; wait $SRV 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q "md instance $((MDS-1)) live" "$D/srv.log" && break; sleep 0.1; done
(exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null || { echo "$LABEL: server not up"; cat "$D/srv.log"; exit 1; }
timeout 20 wrk -t1 -c"$C" -d1s http://127.0.0.1:$PORT/ >/dev/null 2>&1   # warm-up
PIDS="$SRV $(pgrep -P $SRV -d ' ')"
[ "$(echo $PIDS | wc -w)" = $((MDS + 1)) ] || { echo "$LABEL: expected $MDS md children: $PIDS"; exit 1; }
snap() { "$VS" --config "$CFG" --once | awk '{print $1, $2}'; }
snap > "$D/s0"
perf stat --per-thread -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$(echo $PIDS | tr ' ' ',')" -o "$D/perf" & PERF=$!
sleep 0.2
OUT=$(timeout $((DUR + 30)) wrk -t1 -c"$C" -d"${DUR}s" http://127.0.0.1:$PORT/ 2>&1)
kill -INT $PERF; wait $PERF 2>/dev/null
snap > "$D/s1"
REQ=$(echo "$OUT" | awk '/requests in/{print $1}')
RPS=$(echo "$OUT" | awk '/^Requests\/sec:/{print $2}')
ERR=$(echo "$OUT" | grep -E 'Socket errors|Non-2xx' | tr -s ' ' | tr '\n' ';')
delta() { awk -v pat="$1" 'NR==FNR{a[$1]=$2;next} $1 ~ pat && $2 ~ /^[0-9]+$/ {s += $2 - a[$1]} END{print s+0}' "$D/s0" "$D/s1"; }
MSG=$(delta '^io\.messages_in$'); DRN=$(delta '^io\.drained_frames$'); MDF=$(delta '^md\.[0-9]+\.frames_in$')
BELL=$(delta '^(in|out)\.[0-9]+\.producer\.doorbells$'); WK=$(delta '^md\.[0-9]+\.wakeups$')
sum() { awk -F, -v e="$1" '$4==e{s+=$2} END{print s+0}' "$D/perf"; }
TC=$(sum task-clock); CS=$(sum context-switches); SC=$(sum raw_syscalls:sys_enter)
PER=$(awk -F, '$4=="task-clock"{split($1,a,"-"); printf "%s:%.0f ", a[1], $2}' "$D/perf")
awk -v l="$LABEL" -v c="$C" -v rps="$RPS" -v req="$REQ" -v msg="$MSG" -v tc="$TC" -v cs="$CS" \
  -v sc="$SC" -v mdf="$MDF" -v drn="$DRN" -v bell="$BELL" -v wk="$WK" -v err="$ERR" -v per="$PER" \
  -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN{ if (req == 0 || msg == 0) { print l ": no requests"; exit 1 }
 printf "%s c=%s rps=%s req=%s cpu_us=%.2f cs=%.3f sysc=%.2f mdframes=%.3f drained=%.3f bells=%.3f mdwake=%.3f load=%s ms_by_thread=%s %s\n", l, c, rps, req, tc*1000/req, cs/req, sc/req, mdf/msg, drn/msg, bell/msg, wk/msg, load, per, err }'
