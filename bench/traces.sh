#!/usr/bin/env bash
# The cost of `[telemetry]` per request, in instructions (callgrind, bench/instructions.sh):
# mcplb with traces off, and on with sample_ratio 0 (every request unsampled), 0.01 and 1.0,
# exporting to a local OTLP/HTTP sink (bench/otlp_sink.py). The exporter thread's work is
# counted too (callgrind counts every thread of the process).
#
#   bench/traces.sh NEW_BIN [BASE_BIN]
#
# BASE_BIN (optional): a build without traces, run with the same config as "off".
# Settings (env): as bench/instructions.sh (SECS, CONNS, STATS, LOAD_BIN, TOP).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NEW=$1
BASE=${2:-}
# shellcheck source=bench/common.sh
. "$(pwd)/bench/common.sh"
SINK_PORT=$(free_port)
python3 bench/otlp_sink.py "$SINK_PORT" &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT
export TOP=${TOP:-12}
echo "### traces off"
EXTRA="" bench/instructions.sh ${BASE:+"$BASE"} "$NEW"
for ratio in 0.0 0.01 1.0; do
    echo "### sample_ratio = $ratio"
    EXTRA=$(printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s/v1/traces"\nsample_ratio = %s\n' \
        "$SINK_PORT" "$ratio") bench/instructions.sh "$NEW"
done
kill -TERM $sink
wait $sink 2>/dev/null || true
