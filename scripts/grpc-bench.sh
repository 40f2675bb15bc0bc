#!/usr/bin/env bash
# Unary gRPC calls through Nexus (`protocol: h2c` upstream) and through nginx (`grpc_pass`), to
# the same gRPC echo upstream (benches/examples/grpc_echo.rs), with h2load as the client.
#
#   cargo build --release -p nexus-bin && cargo build --release -p nexus-benches --example grpc_echo
#   scripts/grpc-bench.sh
#
# Settings (environment): NEXUS [target/release/nexus], ECHO [target/release/examples/grpc_echo],
# ROUNDS [3], DURATION seconds per run [5], CONNS [50] (HTTP/2 connections), STREAMS [10]
# (concurrent calls per connection), PIN [1]: h2load on CPU 0, the proxies and the upstream on
# CPU 1. Each call is one 100-byte message; the echo answers it with the message and
# `grpc-status: 0` in the trailers. Rounds alternate the order of the two proxies; the table shows
# medians: calls per second, P50/P99 from h2load's per-request log, and the proxy's CPU time per
# call. nginx's `grpc_pass` sends one call per upstream connection at a time (kept alive, up to
# 1,024 idle); Nexus multiplexes them (`protocol: h2c`). Everything listens on 127.0.0.1 and
# stops at exit; the samples stay in the run's directory under /tmp. Needs nginx (with the HTTP/2 and gRPC
# modules), h2load (Debian `nghttp2-client`), taskset and python3.
set -euo pipefail

cd "$(dirname "$0")/.."
NEXUS=${NEXUS:-target/release/nexus}
ECHO=${ECHO:-target/release/examples/grpc_echo}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-50}
STREAMS=${STREAMS:-10}
PIN=${PIN:-1}

for tool in nginx h2load taskset python3; do
    command -v "$tool" >/dev/null || { echo "grpc-bench: $tool is needed" >&2; exit 1; }
done
for bin in "$NEXUS" "$ECHO"; do
    [[ -x $bin ]] || { echo "grpc-bench: $bin is not built (see the header of this script)" >&2; exit 1; }
done

cpu_client=""
cpu_server=""
if [[ $PIN == 1 && $(nproc) -ge 2 ]]; then
    cpu_client="taskset -c 0"
    cpu_server="taskset -c 1"
fi

tmp=$(mktemp -d /tmp/nexus-grpc-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# One gRPC message: flag 0, length 100, 100 bytes.
python3 -c 'import sys; sys.stdout.buffer.write(b"\0\0\0\0\x64" + b"x" * 100)' >"$tmp/call.bin"

$cpu_server "$ECHO" 127.0.0.1:18090 &
pids+=($!)

mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx;
    # No connection is closed for its request count (nginx's default is 1,000), either side.
    keepalive_requests 1000000000;
    upstream echo {
        server 127.0.0.1:18090;
        keepalive 1024;
        keepalive_requests 1000000000;
    }
    server {
        listen 127.0.0.1:18091 http2;
        location / { grpc_pass grpc://echo; }
    }
}
EOF
$cpu_server nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
nginx_master=$!
pids+=("$nginx_master")

cat >"$tmp/nexus.yaml" <<EOF
server:
  listen: "127.0.0.1:18095"
  admin_listen: "127.0.0.1:19096"
logging: { level: warn }
upstreams:
  echo:
    endpoints: [{ url: "http://127.0.0.1:18090" }]
    protocol: h2c
routes:
  - name: echo
    paths: [{ path: /, type: prefix }]
    upstream: echo
EOF
NEXUS_WORKERS=1 $cpu_server "$NEXUS" --config "$tmp/nexus.yaml" 2>"$tmp/nexus.log" &
nexus_pid=$!
pids+=("$nexus_pid")
nginx_pid() { pgrep -n -P "$nginx_master"; }

# Wait until both answer a call.
for port in 18091 18095; do
    ready=0
    for _ in $(seq 50); do
        if h2load -n 1 -c 1 -d "$tmp/call.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://127.0.0.1:$port/bench.Echo/Unary" 2>/dev/null | grep -q '1 succeeded'; then
            ready=1
            break
        fi
        sleep 0.2
    done
    ((ready)) || { echo "grpc-bench: nothing answers on :$port (logs in $tmp)" >&2; exit 1; }
done

cpu_of() { # utime+stime of a process, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

run() { # target port pid round
    local target=$1 port=$2 pid=$3 round=$4 before after out
    before=$(cpu_of "$pid")
    out=$($cpu_client h2load -D "$DURATION" --warm-up-time=1 -c "$CONNS" -m "$STREAMS" -d "$tmp/call.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' --log-file="$tmp/$target-$round.log" \
        "http://127.0.0.1:$port/bench.Echo/Unary")
    after=$(cpu_of "$pid")
    echo "$out" >"$tmp/$target-$round.out"
    python3 - "$target" "$round" "$tmp/$target-$round.log" "$tmp/$target-$round.out" "$((after - before))" \
        "$(getconf CLK_TCK)" >>"$tmp/samples.tsv" <<'PY'
import re, sys
target, rnd, log, out, ticks, hz = sys.argv[1:]
text = open(out).read()
m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
done, bad = int(m.group(1)), sum(int(g) for g in m.groups()[1:])
# h2load may count one 2xx more than calls done (a warm-up call ending in the window).
ok = done if bad == 0 and int(re.search(r"status codes: (\d+) 2xx", text).group(1)) >= done else done - max(bad, 1)
rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text).group(1))
lat = sorted(int(l.split("\t")[2]) for l in open(log) if l.strip())
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
cpu_us = int(ticks) * 1e6 / int(hz) / max(done, 1)
print(f"{target}\t{rnd}\t{rps:.0f}\t{p(0.5):.2f}\t{p(0.99):.2f}\t{cpu_us:.1f}\t{done}\t{ok}")
PY
    echo "  round $round $target: $(tail -1 "$tmp/samples.tsv" | cut -f3) calls/s"
}

echo "grpc-bench: rounds=$ROUNDS duration=${DURATION}s conns=$CONNS streams=$STREAMS pin=$PIN"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="nginx nexus"; else order="nexus nginx"; fi
    for target in $order; do
        if [[ $target == nginx ]]; then run nginx 18091 "$(nginx_pid)" "$round"; else run nexus 18095 "$nexus_pid" "$round"; fi
    done
done

python3 - "$tmp/samples.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = {}
for t, rnd, rps, p50, p99, cpu, done, ok in rows:
    if int(ok) != int(done):
        sys.exit(f"grpc-bench: {t} round {rnd}: calls failed, errored, timed out or were not 2xx")
    by.setdefault(t, []).append((float(rps), float(p50), float(p99), float(cpu), int(rnd)))
ratio = statistics.median(
    n[0] / g[0] for n in by["nexus"] for g in by["nginx"] if n[4] == g[4])
print("| target | calls/s median | P50 ms | P99 ms | CPU µs/call | × nginx |")
print("|---|---:|---:|---:|---:|---:|")
for t in ("nginx", "nexus"):
    m = lambda i: statistics.median(r[i] for r in by[t])
    print(f"| {t} | {m(0):.0f} | {m(1):.2f} | {m(2):.2f} | {m(3):.1f} | {1.0 if t == 'nginx' else ratio:.2f} |")
print(f"\nMedians over {len(by['nexus'])} rounds; × nginx is the median of per-round ratios. Samples: {sys.argv[1]}")
PY
