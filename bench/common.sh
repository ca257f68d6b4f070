# Shared by the bench/*.sh scripts (sourced, not run): tools from Debian's packages, waiting
# for a quiet machine, and running the Python orchestrator so that it is stopped with the script.
# The caller sets SAY_TAG (the prefix of its messages) before sourcing.

say() { echo "[${SAY_TAG:-bench}] $*" >&2; }

# no_args_or_help SCRIPT [ARG...]: for scripts set by environment variables alone. --help or -h
# prints SCRIPT's header comment (line 2 up to its `set -euo pipefail`) and exits; any other
# argument is refused.
no_args_or_help() {
    case ${2:-} in
        -h | --help)
            sed -n '2,/^set -euo/p' "$1" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        "") ;;
        *) say "no arguments (settings are environment variables; see --help)"; exit 2 ;;
    esac
}

# A TCP port free on 127.0.0.1 now (the kernel's pick; the caller binds it soon after).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# split_spec BIN[:EXTRA.toml]: sets SPEC_BIN (the binary's real path) and SPEC_EXTRA (the
# TOML appended to that proxy's config, or empty), so one build can be compared with itself
# under two configs (a feature on and off in the same run).
split_spec() {
    local spec=$1
    SPEC_EXTRA=""
    if [[ $spec == *:* ]]; then SPEC_EXTRA=$(realpath "${spec#*:}"); spec=${spec%%:*}; fi
    SPEC_BIN=$(realpath "$spec")
}

# install_missing COMMAND:PACKAGE ...: apt-get installs the packages whose command is missing
# (NO_INSTALL set: fail instead).
install_missing() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
    done
    [ ${#need[@]} -eq 0 ] && return 0
    if [ -n "${NO_INSTALL:-}" ]; then say "missing: ${need[*]} (NO_INSTALL set)"; exit 1; fi
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    say "installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
}

# wait_quiet MAX WAIT: waits up to WAIT seconds for the 1-minute load average to drop below MAX.
wait_quiet() {
    local max=$1 limit=$2 waited=0
    while awk -v m="$max" '{ exit !($1 >= m) }' /proc/loadavg && [ "$waited" -lt "$limit" ]; do
        [ $((waited % 60)) -eq 0 ] && say "load average $(cut -d' ' -f1-3 /proc/loadavg) >= $max; waiting (up to ${limit}s)"
        sleep 10; waited=$((waited + 10))
    done
    say "load average $(cut -d' ' -f1-3 /proc/loadavg); starting"
}

# run_stoppable COMMAND...: runs COMMAND in the background and waits for it; an interrupted
# script stops it (by its PID) on the way out. Exits with COMMAND's status.
run_stoppable() {
    local pid rc
    "$@" &
    pid=$!
    # shellcheck disable=SC2064 # the PID is meant to be fixed now
    trap "kill -0 $pid 2>/dev/null && { kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; }" EXIT
    trap 'exit 130' INT TERM
    rc=0
    wait "$pid" || rc=$?
    trap - EXIT
    exit $rc
}

# mcplb_toml PORT MOCK_PORT WORKERS [PROXY_LINES] [GROUP_LINES] [TABLES]: prints the config of
# an mcplb under bench: WORKERS workers listening on 127.0.0.1:PORT, one group "b" at /mcp in
# front of the mock backend on MOCK_PORT, its health checks off (they would add requests of
# their own to what is measured). PROXY_LINES go in [proxy] (and may open tables of their own,
# such as [admin]), GROUP_LINES in the group before its tables, TABLES after them.
mcplb_toml() {
    local port=$1 mock=$2 workers=$3 proxy=${4:-} group=${5:-} tables=${6:-}
    cat <<TOML
[proxy]
listen = "127.0.0.1:$port"
workers = $workers
$proxy
[[servers]]
name = "b"
path = "/mcp"
backends = ["http://127.0.0.1:$mock/mcp"]
$group
[servers.health]
enabled = false
$tables
TOML
}

# make_cert DIR: a self-signed ECDSA P-256 certificate for 127.0.0.1/localhost, made by openssl
# for this run: DIR/cert.pem and DIR/key.pem (clients under bench do not verify it).
make_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1/key.pem" \
        -out "$1/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
}

# h2load_request LUA BODY: writes the request body of the wrk script LUA (bench/quick/*.lua) to
# BODY and prints its headers as h2load arguments, one a line (-H, then "name: value").
h2load_request() {
    python3 - "$1" "$2" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
open(sys.argv[2], "w").write(re.search(r"wrk\.body = '(.*)'", src).group(1))
for k, v in re.findall(r'wrk\.headers\["([^"]+)"\] = "([^"]*)"', src):
    print("-H")
    print(f"{k.lower()}: {v}")
PY
}
