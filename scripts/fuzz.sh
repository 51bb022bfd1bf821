#!/usr/bin/env bash
# Coverage-guided fuzzing of the binary analysis, by hand (not part of
# scripts/test.sh, which replays the committed corpus in bounded time):
#   scripts/fuzz.sh [TARGET...]      default: analyse pclntab buildinfo dwarf code
# FUZZ_SECONDS per target (default 600), FUZZ_JOBS targets at a time
# (default 2). Needs the nightly toolchain and cargo-fuzz (installed here if
# missing). Seeds come from the fixtures (the fuzz_corpus test writes them);
# the working corpora live in /var/cache/gmon-agent/fuzz, outside the
# checkout; afterwards each is merged with the committed corpus and the seeds into a
# minimal set whose inputs up to 64 KiB replace agent/fuzz/corpus/<target>
# (commit those). Prints executions,
# coverage and findings per target; crashes land in agent/fuzz/artifacts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
secs=${FUZZ_SECONDS:-600}
jobs=${FUZZ_JOBS:-2}
work=/var/cache/gmon-agent/fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(analyse pclntab buildinfo dwarf code)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

# Seeds from every fixture shape (builds the fixtures if needed).
"$root/scripts/build-fixtures.sh" >/dev/null
rm -rf "$work/seeds"
FUZZ_SEEDS_OUT="$work/seeds" cargo test -q --manifest-path "$root/Cargo.toml" \
  -p agent --test fuzz_corpus >/dev/null

cd "$root/agent"
# No sanitizer: ASan's start-up crashes in dlsym on this machine's glibc, and
# the analysis is safe Rust over a read-only map. The targets' allocator
# fails any single allocation over 128 MiB instead (gobin::fuzz::CappedAlloc).
# Debug assertions on (-a): an arithmetic overflow is a finding, as it is
# in the test suite's replay of the corpus.
fuzz=(cargo +nightly fuzz)
opts=(-O -a -s none)
"${fuzz[@]}" build "${opts[@]}"

run() {
  local t=$1 dir="$work/corpus/$t"
  mkdir -p "$dir" "$root/agent/fuzz/corpus/$t"
  "${fuzz[@]}" run "${opts[@]}" "$t" "$dir" "$root/agent/fuzz/corpus/$t" "$work/seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 >"$work/$t.log" 2>&1 || echo "$t: FINDING, see $work/$t.log" >&2
}

mkdir -p "$work"
running=0
for t in "${targets[@]}"; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
done
wait

printf '%-10s %12s %10s %8s %8s %8s %s\n' target executions exec/s cov ft corpus findings
for t in "${targets[@]}"; do
  log="$work/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  found=$(grep -cE '^==[0-9]+== ERROR|^thread .* panicked|deadly signal|out-of-memory|memory allocation of' "$log" || true)
  printf '%-10s %12s %10s %8s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$found"
done

# Merge each target's inputs (working corpus, committed corpus, seeds) into
# a minimal set that keeps their coverage, and commit its small inputs:
# agent/fuzz/corpus/<target> is replaced by it.
for t in "${targets[@]}"; do
  min="$work/min/$t"
  rm -rf "$min" && mkdir -p "$min"
  "${fuzz[@]}" run "${opts[@]}" "$t" "$min" "$work/corpus/$t" "$root/agent/fuzz/corpus/$t" "$work/seeds/$t" -- \
    -merge=1 -rss_limit_mb=2048 -timeout=10 >"$work/$t.merge.log" 2>&1 || { echo "$t: merge failed, see $work/$t.merge.log" >&2; continue; }
  rm -rf "$root/agent/fuzz/corpus/$t" && mkdir -p "$root/agent/fuzz/corpus/$t"
  find "$min" -type f -size -65k -exec cp -t "$root/agent/fuzz/corpus/$t" {} +
  echo "$t: $(find "$root/agent/fuzz/corpus/$t" -type f | wc -l) inputs in agent/fuzz/corpus/$t ($(du -sh "$root/agent/fuzz/corpus/$t" | cut -f1))"
done
