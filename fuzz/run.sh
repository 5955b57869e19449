#!/usr/bin/env bash
# Runs one afl.rs fuzz target for a while: fuzz/run.sh TARGET SECONDS [extra afl-fuzz args].
# `fuzz/run.sh setup` only installs cargo-afl and builds every target; SKIP_BUILD=1 skips that.
#
# TARGET is framing, http, resp, proxy, ring, config or stats (see fuzz/src/lib.rs). Installs cargo-afl (which
# builds AFL++ from its bundled source) the first time, builds the instrumented targets, then
# runs afl-fuzz on fuzz/seeds/TARGET, writing to fuzz/out/TARGET or $FUZZ_OUT/TARGET (kept between runs: AFL++
# resumes from its queue). No stdin, no UI: fine under CI=true. Exits non-zero if the run found
# a crash, after copying the crashing inputs to fuzz/crashes/TARGET (replay one with
# `FUZZ_TARGET=T FUZZ_INPUT=F cargo test --lib one` in fuzz/, then turn it into a regression
# test in the crate it belongs to).
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET SECONDS}
secs=${2:-}
shift $(($# < 2 ? $# : 2))
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

setup() {
    if ! cargo afl --version >/dev/null 2>&1; then
        cargo install cargo-afl --locked --version "^0.18" </dev/null
    fi
    # Builds AFL++ for this rustc if the install did not; refuses (harmlessly) when it exists.
    cargo afl config --build </dev/null >/dev/null 2>&1 || true
    cargo afl build --release </dev/null
}

if [[ $target == setup ]]; then
    setup
    exit 0
fi
[[ -d seeds/$target ]] || { echo "unknown target $target (have: $(ls seeds))" >&2; exit 2; }
[[ -n $secs ]] || { echo "usage: fuzz/run.sh TARGET SECONDS" >&2; exit 2; }
[[ ${SKIP_BUILD:-} == 1 ]] || setup

# Not an interactive terminal, and no core_pattern or CPU governor set up for AFL++ here.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1 AFL_SKIP_CRASHES=1
out=${FUZZ_OUT:-out}/$target
mkdir -p "$out"
input=seeds/$target
# `-i -` resumes an earlier run from its own queue.
[[ -f $out/default/fuzzer_stats ]] && input=-
cargo afl fuzz -V "$secs" -i "$input" -o "$out" "$@" "target/release/$target" </dev/null \
    >"$out/afl.log" 2>&1 || { tail -30 "$out/afl.log" >&2; exit 1; }
echo "== $target"
grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg) ' \
    "$out/default/fuzzer_stats"
crashes=$(find "$out/default/crashes" -type f -name 'id:*' | wc -l)
if ((crashes > 0)); then
    mkdir -p "crashes/$target"
    for f in "$out"/default/crashes/id:*; do
        cp "$f" "crashes/$target/$(basename "$f" | tr ':,' '__')"
    done
    echo "$target: $crashes crashing input(s), copied to fuzz/crashes/$target" >&2
    exit 1
fi
