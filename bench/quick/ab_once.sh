#!/bin/bash
# One paired-run cell: start MCPLB_BIN with CONFIG pinned to core 0, warm it for 1 s, run wrk
# (core 1, 64 connections, SECS s, keep-alive), print req/s and the proxy's CPU µs per request,
# stop it by its PID. The backend named in CONFIG must already run (pinned to core 1).
# usage: ab_once.sh MCPLB_BIN CONFIG PORT [http|https] [SECS]
bin=$1; conf=$2; port=$3; scheme=${4:-http}; secs=${5:-8}
cd "$(dirname "$0")"
log=$(mktemp)
taskset -c 0 "$bin" run --config "$conf" >"$log" 2>&1 &
pid=$!
for _ in $(seq 200); do grep -q "listening on" "$log" && break; sleep 0.05; done
url="$scheme://127.0.0.1:$port/mcp"
taskset -c 1 wrk -t1 -c64 -d1s -s ./post.lua "$url" >/dev/null
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
out=$(taskset -c 1 wrk -t1 -c64 -d"${secs}"s -s ./post.lua "$url")
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
kill "$pid"; wait "$pid" 2>/dev/null
rm -f "$log"
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr '\n' ' ')
echo "bin=$bin scheme=$scheme rps=$rps reqs=$reqs cpu_us_per_req=$(echo "scale=2; ($t1-$t0)*1000000/$(getconf CLK_TCK)/$reqs" | bc) $errs"
