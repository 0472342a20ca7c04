#!/usr/bin/env bash
# Whole-process figures for `chapar seal` and `chapar open`: wall time,
# MB/s and peak RSS (from /usr/bin/time -v) at two input sizes, to show
# that memory stays flat as the input grows.
# Usage: scripts/bench-rss.sh [SIZES_MIB...]   (default: 256 2048)
# Needs /usr/bin/time (apt-get install time). Writes into a temp folder on
# the same disk as the repository's target/ and removes it afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(256 2048)
cd "$here"
cargo build --release --quiet --bin chapar
chapar="$here/target/release/chapar"
work=$(mktemp -d -p "$here/target" bench-rss.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$chapar" keygen -o "$work/key.txt" >"$work/recipient"
recipient=$(cat "$work/recipient")

measure() { # label bytes cmd...
  local label=$1 bytes=$2; shift 2
  sync
  /usr/bin/time -v "$@" >/dev/null 2>"$work/time.txt"
  local rss_kib wall
  rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
  local secs
  secs=$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  printf '%-6s %6s MiB  %8.2f s  %8.1f MB/s  peak RSS %6.1f MiB\n' \
    "$label" "$((bytes / 1048576))" "$secs" "$(echo "$bytes $secs" | awk '{print $1/$2/1e6}')" \
    "$(echo "$rss_kib" | awk '{print $1/1024}')"
}

for mib in "${sizes[@]}"; do
  rm -rf "$work/in" "$work/bundle" "$work/out"
  mkdir "$work/in"
  head -c "$((mib * 1048576))" /dev/urandom >"$work/in/evidence.bin"
  bytes=$((mib * 1048576))
  measure seal "$bytes" "$chapar" seal -r "$recipient" -o "$work/bundle" "$work/in"
  measure open "$bytes" "$chapar" open -i "$work/key.txt" -o "$work/out" "$work/bundle"
  cmp "$work/in/evidence.bin" "$work/out/in/evidence.bin"
done
