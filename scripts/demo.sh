#!/usr/bin/env bash
# The main job on an embedded default: a complete swarm on this machine.
#
#   scripts/demo.sh [--private] [SIZE_MIB] [MEMBERS]      (defaults: 256 MiB, 4 members)
#
# --private composes a private swarm (composer --private): the key file sample.orch.key lands
# beside sample.orch, every member finds it there, and every link is encrypted.
#
# Builds the release binaries, makes a file of pseudo-random bytes, composes its .orch, starts a
# conductor, a seeder and MEMBERS members on 127.0.0.1, shows their progress, checks every copy
# byte for byte against the original, reports time and throughput, and cleans up after itself.
set -euo pipefail

private=()
if [[ ${1:-} == --private ]]; then
    private=(--private)
    shift
fi
size_mib=${1:-256}
members=${2:-4}
limit_secs=${DEMO_TIMEOUT:-600}
[[ $size_mib =~ ^[0-9]+$ && $size_mib -ge 1 ]] || { echo "error: SIZE_MIB must be a positive number" >&2; exit 2; }
[[ $members =~ ^[0-9]+$ && $members -ge 1 && $members -le 32 ]] || { echo "error: MEMBERS must be 1 to 32" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
echo "building release binaries..."
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin="$root/target/release"

work=$(mktemp -d "${TMPDIR:-/tmp}/torrentnchill-demo.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# The value of a numeric field in the last JSON line of a file that has it.
field() { { grep -o "\"$2\":[0-9.]*" "$1" 2>/dev/null || true; } | tail -n 1 | cut -d: -f2; }

echo "making a $size_mib MiB sample file in $work..."
mkdir -p "$work/seed"
sample="$work/seed/sample.bin"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$sample"

"$bin/conductor" --listen 127.0.0.1:0 --interval 5s > "$work/conductor.out" 2> "$work/conductor.log" &
pids+=($!)
for _ in $(seq 100); do
    grep -q '^listening on ' "$work/conductor.out" 2>/dev/null && break
    sleep 0.05
done
conductor=$(sed -n 's/^listening on //p' "$work/conductor.out")
[[ -n $conductor ]] || { echo "error: the conductor did not start: $(cat "$work/conductor.log")" >&2; exit 1; }
echo "conductor on $conductor"

t0=$(now)
"$bin/composer" "$sample" "$conductor" -o "$work/sample.orch" --quiet ${private[@]+"${private[@]}"}
echo "composed $work/sample.orch in $(elapsed "$t0" "$(now)") s"
[[ ${#private[@]} -eq 0 ]] || echo "private swarm: key in $work/sample.orch.key"

"$bin/member" "$work/sample.orch" --dir "$work/seed" --listen 127.0.0.1:0 --json \
    > "$work/seed.jsonl" 2> "$work/seed.log" &
seeder=$!
pids+=($seeder)

start=$(now)
member_pids=()
for i in $(seq "$members"); do
    "$bin/member" "$work/sample.orch" --dir "$work/m$i" --listen 127.0.0.1:0 --json --exit-when-done \
        > "$work/m$i.jsonl" 2> "$work/m$i.log" &
    member_pids+=($!)
    pids+=($!)
done
echo "seeder and $members members started"

total=$((size_mib * 1024 * 1024))
while :; do
    line=""
    running=0
    for i in $(seq "$members"); do
        done_bytes=$(field "$work/m$i.jsonl" bytes_done)
        pct=$(( ${done_bytes:-0} * 100 / total ))
        line+=$(printf "m%d %3d%%  " "$i" "$pct")
        kill -0 "${member_pids[$((i - 1))]}" 2>/dev/null && running=$((running + 1))
    done
    up=$(field "$work/seed.jsonl" bytes_up)
    line+=$(printf "| seeder sent %s MiB" "$(( ${up:-0} / 1048576 ))")
    if [[ -t 1 ]]; then printf '\r%s' "$line"; else echo "$line"; fi
    [[ $running -eq 0 ]] && break
    if (( $(printf '%.0f' "$(elapsed "$start" "$(now)")") > limit_secs )); then
        echo; echo "error: the members did not finish within $limit_secs s" >&2; exit 1
    fi
    sleep 0.5
done
[[ -t 1 ]] && echo
wall=$(elapsed "$start" "$(now)")

failed=0
for i in $(seq "$members"); do
    if ! wait "${member_pids[$((i - 1))]}"; then
        echo "member $i failed: $(tail -n 1 "$work/m$i.log")" >&2
        failed=1
    elif ! cmp -s "$sample" "$work/m$i/sample.bin"; then
        echo "member $i: copy differs from the original" >&2
        failed=1
    else
        secs=$(grep '"event":"summary"' "$work/m$i.jsonl" | grep -o '"seconds":[0-9.]*' | cut -d: -f2)
        echo "member $i: verified copy, identical to the original, in ${secs} s"
    fi
done
[[ $failed -eq 0 ]] || exit 1

expected=$(sed -n 3p "$work/sample.orch")
actual=$(sha256sum "$work/m1/sample.bin" | cut -d' ' -f1)
[[ $expected == "$actual" ]] || { echo "error: sha256sum differs from the .orch" >&2; exit 1; }

# A clean stop makes the seeder write its summary, with the bytes it sent in all.
kill -TERM "$seeder"
wait "$seeder" || true
up=$(grep '"event":"summary"' "$work/seed.jsonl" | grep -o '"bytes_up":[0-9]*' | cut -d: -f2)
awk -v n="$members" -v s="$total" -v t="$wall" -v up="${up:-0}" 'BEGIN {
    printf "all %d copies verified (sha256sum matches the .orch) in %.2f s: %.0f MB/s delivered in total\n", n, t, n * s / t / 1e6
    printf "the seeder sent %.2f copies of the file; the members traded the rest among themselves\n", up / s
}'
