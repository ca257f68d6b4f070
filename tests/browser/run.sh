#!/usr/bin/env bash
# Browser test of the admin page (issue 6): GET / on the admin port is a
# self-contained HTML page that polls /stats and renders the percentile table,
# a latency chart per backend and per tool, and the counters.
#
# Starts a mock backend and mcplb, sends tools/call traffic, then loads the
# page in headless Chromium (Debian's `chromium` package, installed if missing)
# twice: --dump-dom (the DOM after the page's script ran must hold the `echo`
# tool row with count >= N and numeric percentiles, and chart bars) and
# --screenshot (tests/browser/out/admin.png must not be blank and must show
# text and the chart's bar colours).
#
# Env: MCPLB_BIN (default target/debug/mcplb), MCPLB_LOAD_BIN (default
# target/debug/mcplb-load); build both with `cargo build --workspace --bins`.
# REQUESTS (default 50) tools/call requests are sent.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# Paths given in the environment are relative to the caller's directory.
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
MCPLB_BIN="$(abs "${MCPLB_BIN:-$ROOT/target/debug/mcplb}")"
MCPLB_LOAD_BIN="$(abs "${MCPLB_LOAD_BIN:-$ROOT/target/debug/mcplb-load}")"
cd "$ROOT"
REQUESTS="${REQUESTS:-50}"
OUT="$HERE/out"
CHROMIUM=/usr/bin/chromium

say() { echo "[browser] $*"; }
die() { echo "[browser] FAIL: $*" >&2; exit 1; }

# --- 1. Chromium ---------------------------------------------------------------
if [ ! -x "$CHROMIUM" ]; then
    say "installing Debian's chromium package"
    [ "$(id -u)" = 0 ] || die "$CHROMIUM is missing and installing it needs root"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    [ -x "$CHROMIUM" ] || die "apt-get install chromium did not provide $CHROMIUM"
fi

# --- 2. binaries ---------------------------------------------------------------
for b in "$MCPLB_BIN" "$MCPLB_LOAD_BIN"; do
    [ -x "$b" ] || die "$b not found; run: cargo build --workspace --bins"
done
command -v python3 >/dev/null || die "python3 is required"

# --- process bookkeeping -------------------------------------------------------
WORK="$(mktemp -d -t mcplb-browser.XXXXXX)"
PIDS=()
OK=0
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$OK" != 1 ]; then
        for f in "$WORK"/*.log; do
            [ -f "$f" ] || continue
            echo "----- $(basename "$f") (last 20 lines) -----" >&2
            grep -vE 'dbus/|unexpected operator' "$f" | tail -n 20 >&2 || true
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for FILE REGEX PID WHAT: waits up to 15 s for a line matching REGEX in FILE
wait_for() {
    local file=$1 re=$2 pid=$3 what=$4 i
    for i in $(seq 1 150); do
        if grep -qE "$re" "$file" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || die "$what exited before it was ready"
        sleep 0.1
    done
    die "$what did not become ready within 15 s"
}

# --- 3. mock backend and mcplb ---------------------------------------------------
BACKEND_PORT="$(free_port)"
"$MCPLB_LOAD_BIN" mock --listen "127.0.0.1:$BACKEND_PORT" --name alpha --stateless \
    >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_for "$WORK/mock.log" "listening" "${PIDS[-1]}" "mock backend"

cat >"$WORK/mcplb.toml" <<EOF
[proxy]
listen = "127.0.0.1:0"
workers = 2
[admin]
listen = "127.0.0.1:0"
[[servers]]
name = "demo"
path = "/mcp"
backends = ["http://127.0.0.1:$BACKEND_PORT/mcp"]
EOF
"$MCPLB_BIN" run --config "$WORK/mcplb.toml" >"$WORK/mcplb.stdout.log" 2>"$WORK/mcplb.stderr.log" &
PIDS+=($!)
wait_for "$WORK/mcplb.stdout.log" "^mcplb admin on http://" "${PIDS[-1]}" "mcplb"
wait_for "$WORK/mcplb.stdout.log" "^mcplb listening on " "${PIDS[-1]}" "mcplb"
PROXY="$(sed -nE 's/^mcplb listening on ([^ ]+).*/\1/p' "$WORK/mcplb.stdout.log" | head -n1)"
ADMIN="$(sed -nE 's#^mcplb admin on http://([^/ ]+)/.*#\1#p' "$WORK/mcplb.stdout.log" | head -n1)"
[ -n "$PROXY" ] && [ -n "$ADMIN" ] || die "could not parse the proxy/admin addresses from mcplb's stdout"
say "mock backend 127.0.0.1:$BACKEND_PORT, proxy $PROXY, admin $ADMIN"

# --- 4. traffic, then wait for the stats flush -----------------------------------
python3 - "$PROXY" "$ADMIN" "$REQUESTS" <<'EOF'
import json, sys, time, urllib.request
proxy, admin, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for i in range(1, n + 1):
    body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                       "params": {"name": "echo", "arguments": {}}}).encode()
    req = urllib.request.Request(f"http://{proxy}/mcp", data=body, method="POST", headers={
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28"})
    with opener.open(req, timeout=10) as r:
        if r.status != 200:
            sys.exit(f"tools/call {i}: HTTP {r.status}")
        r.read()
# Stats flush about once a second: poll /stats until the tool's count shows up.
deadline = time.time() + 10
count = 0
while time.time() < deadline:
    time.sleep(0.5)
    with opener.open(f"http://{admin}/stats", timeout=5) as r:
        s = json.load(r)
    count = s.get("since_start", {}).get("tools", {}).get("echo", {}).get("total", {}).get("count", 0)
    if count >= n:
        print(f"[browser] sent {n} tools/call requests; /stats shows echo count {count}")
        sys.exit(0)
sys.exit(f"/stats echo count is {count} after 10 s, expected >= {n}")
EOF

# --- 5. headless Chromium ---------------------------------------------------------
# Check the page is self-contained (no external scripts, styles or fonts).
python3 - "$ADMIN" <<'EOF' || die "admin page GET / check failed"
import re, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(f"http://{sys.argv[1]}/", timeout=5) as r:
    ctype, page = r.headers.get("content-type", ""), r.read().decode()
if "text/html" not in ctype:
    sys.exit(f"GET / content-type is {ctype!r}, expected text/html")
ext = re.findall(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//[^"\'\s>]+|@import|url\(\s*["\']?(?:https?:)?//', page)
ext += re.findall(r'<script[^>]*\bsrc\s*=[^>]*>|<link[^>]*>|@font-face', page, re.I)
if ext:
    sys.exit(f"admin page is not self-contained; it references: {ext}")
for needed in ('id="tbl"', 'id="chart"', 'id="ctr"', "/stats"):
    if needed not in page:
        sys.exit(f"admin page lacks {needed}")
EOF

mkdir -p "$OUT"
rm -f "$OUT/admin.png" "$OUT/admin.dom.html"
chromium_run() {
    local profile
    profile="$(mktemp -d -p "$WORK" profile.XXXXXX)"
    timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --no-proxy-server --disable-dev-shm-usage --hide-scrollbars \
        --user-data-dir="$profile" --virtual-time-budget=5000 "$@" "http://$ADMIN/"
}

say "chromium --dump-dom http://$ADMIN/"
chromium_run --dump-dom >"$OUT/admin.dom.html" 2>"$WORK/chromium-dom.log" \
    || die "chromium --dump-dom failed (exit $?)"
python3 "$HERE/check_dom.py" "$OUT/admin.dom.html" echo "$REQUESTS" \
    || die "rendered DOM check failed; see $OUT/admin.dom.html"

say "chromium --screenshot=$OUT/admin.png"
chromium_run --screenshot="$OUT/admin.png" --window-size=1200,900 \
    >"$WORK/chromium-shot.log" 2>&1 || die "chromium --screenshot failed (exit $?)"
[ -s "$OUT/admin.png" ] || die "chromium wrote no screenshot to $OUT/admin.png"
python3 "$HERE/check_png.py" "$OUT/admin.png" || die "screenshot check failed; see $OUT/admin.png"

OK=1
say "PASS: admin page renders the percentile table, chart and counters (screenshot: $OUT/admin.png)"
