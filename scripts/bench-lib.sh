# Helpers shared by the benchmark scripts; sourced, not run.

# Waits (up to $3 seconds) for a line matching $2 in log $1; prints it.
wait_for() {
  local log=$1 pattern=$2 limit=$3 line
  local deadline=$((SECONDS + limit))
  while [ "$SECONDS" -le "$deadline" ]; do
    line=$(grep -m1 -- "$pattern" "$log" 2>/dev/null || true)
    if [ -n "$line" ]; then
      echo "$line"
      return 0
    fi
    sleep 0.05
  done
  echo "no \"$pattern\" in $log after ${limit}s:" >&2
  tail -20 "$log" >&2
  return 1
}

# Bytes of all files under folder $1.
chunk_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'; }
