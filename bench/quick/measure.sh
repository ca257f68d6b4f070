#!/bin/bash
# usage: measure.sh PID PORT -> prints req/s and cpu-us/req
pid=$1; port=$2
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
out=$(taskset -c 1 wrk -t1 -c64 -d8s -s ./post.lua http://127.0.0.1:$port/mcp)
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr '\n' ' ')
echo "port=$port rps=$rps reqs=$reqs cpu_us_per_req=$(echo "scale=2; ($t1-$t0)*10000/$reqs" | bc) $errs"
