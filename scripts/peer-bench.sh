#!/usr/bin/env bash
# Nexus beside nginx on this machine, and optionally two Nexus builds beside each other
# (a change measured before/after in the same run).
#
#   scripts/peer-bench.sh                                   # target/release/nexus vs nginx
#   NEXUS_B=/tmp/nexus-before scripts/peer-bench.sh         # plus a second build, paired per round
#   CONFIG=benches/peer-bench-full.yaml scripts/peer-bench.sh   # the full chain
#   TLS=1 scripts/peer-bench.sh                             # clients over TLS (same certificate)
#   TLS=1 WRK_HEADER="Connection: close" scripts/peer-bench.sh  # a handshake per request
#   UPSTREAM_TLS=1 scripts/peer-bench.sh                    # both proxies speak TLS to the upstream
#   H2=1 CONNS=50 scripts/peer-bench.sh                     # HTTP/2 clients (h2load, 10 streams each)
#   AB=1 CONNS=50 scripts/peer-bench.sh                     # HTTP/1.0 keep-alive clients (ab -k)
#
# Settings (environment): NEXUS_A [target/release/nexus], NEXUS_B [none], CONFIG
# [benches/peer-bench.yaml], CONFIG_B [CONFIG] (B's config: one build, two settings), ROUNDS [3], DURATION seconds per wrk run [5], CONNS ["50 1000"],
# WRK_HEADER (one extra request header, e.g. "Authorization: Bearer ..."), WRK_SCRIPT (a wrk Lua
# script, e.g. benches/wrk/post.lua: POSTs with a 1 KiB body; benches/wrk/chunked.lua: the same
# body sent chunked; benches/wrk/browser.lua: GETs with a browser's seven fields), PIN [1], TLS [0]: 1 puts TLS in
# front of both proxies (nginx `listen ssl` on :18443, Nexus `server.tls` on :18445/:18446, one
# ECDSA P-256 certificate made for the run, TLS 1.3 negotiated by wrk), UPSTREAM_TLS [0]: 1 makes
# the nginx upstream listen with TLS (the same certificate) and both proxies verify it and keep
# their TLS connections alive (nginx `proxy_ssl_*` with session reuse, Nexus `https://` + `tls`).
# H2 [0]: 1 loads with h2load instead of wrk (cleartext HTTP/2 with prior knowledge, `-m` H2_STREAMS
# [10] streams per connection; nginx gets `listen ... http2`); h2load gives no percentiles, so the
# tail column is then its slowest request (`max`) instead of wrk's P99. AB [0]: 1 loads with
# ApacheBench (`ab -k`: HTTP/1.0 requests asking for keep-alive, as old clients and proxies
# send them); its P99 is in whole milliseconds.
#
# It starts a static nginx upstream on 127.0.0.1:18080 (benches/nginx/upstream.conf), nginx as
# the peer proxy on :18081 (benches/nginx/proxy.conf), Nexus A on :18085 and B on :18086, one
# worker each. With PIN=1 and two or more CPUs, wrk runs on CPU 0 and the proxies and the
# upstream share CPU 1, so every proxy competes for the same core. Each round runs every target
# once per connection count, in an order that rotates between rounds; the table shows medians,
# and ratios are medians of per-round ratios (the machine drifts; compare within a round).
# CPU per request is the proxy's utime+stime during its run divided by the requests it served
# (also shown split into user and system time), and the upstream's beside it: with PIN=1 the
# upstream shares the proxies' CPU, so fields a proxy adds to each request cost there too.
# Needs nginx, wrk, taskset and python3; everything listens on 127.0.0.1 and stops at exit.
set -euo pipefail

cd "$(dirname "$0")/.."
NEXUS_A=${NEXUS_A:-target/release/nexus}
NEXUS_B=${NEXUS_B:-}
CONFIG=${CONFIG:-benches/peer-bench.yaml}
CONFIG_B=${CONFIG_B:-$CONFIG}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-50 1000}
WRK_HEADER=${WRK_HEADER:-}
WRK_SCRIPT=${WRK_SCRIPT:-}
PIN=${PIN:-1}
TLS=${TLS:-0}
UPSTREAM_TLS=${UPSTREAM_TLS:-0}
H2=${H2:-0}
H2_STREAMS=${H2_STREAMS:-10}
AB=${AB:-0}

die() { echo "peer-bench: $*" >&2; exit 1; }
for tool in nginx wrk taskset python3 curl pgrep; do
  command -v "$tool" >/dev/null || die "missing $tool (apt-get install nginx wrk util-linux python3 curl procps)"
done
[[ -x $NEXUS_A ]] || die "no Nexus binary at $NEXUS_A (cargo build --release -p nexus-bin)"
[[ -z $NEXUS_B || -x $NEXUS_B ]] || die "no Nexus binary at $NEXUS_B"
if [[ $H2 == 1 ]]; then
  command -v h2load >/dev/null || die "missing h2load (apt-get install nghttp2-client)"
  [[ $TLS == 0 && -z $WRK_SCRIPT ]] || die "H2=1 runs cleartext GETs: no TLS=1, no WRK_SCRIPT"
fi
if [[ $AB == 1 ]]; then
  command -v ab >/dev/null || die "missing ab (apt-get install apache2-utils)"
  [[ $TLS == 0 && $H2 == 0 && -z $WRK_SCRIPT ]] || die "AB=1 runs cleartext GETs: no TLS=1, H2=1 or WRK_SCRIPT"
fi

load=() server=()
if [[ $PIN == 1 && $(nproc) -ge 2 ]]; then
  load=(taskset -c 0) server=(taskset -c 1)
fi

work=$(mktemp -d /tmp/nexus-peer-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

start() { # name, then the command
  local name=$1
  shift
  "${server[@]}" "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
  eval "pid_$name=$!"
}

for n in upstream proxy; do mkdir -p "$work/$n/tmp"; done
proxy_conf=$PWD/benches/nginx/proxy.conf
scheme=http
declare -A port=([nginx]=18081 [nexus_a]=18085 [nexus_b]=18086)
config_a=$CONFIG config_b=$CONFIG_B
if [[ $TLS == 1 || $UPSTREAM_TLS == 1 ]]; then
  command -v openssl >/dev/null || die "missing openssl"
  # A CA and a leaf it signs (rustls, rightly, refuses a CA certificate as a server's own).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=peer-bench-ca \
    -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$work/leaf.ext"
  openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/leaf.ext" -out "$work/tls.crt" 2>/dev/null
fi
upstream_conf=$PWD/benches/nginx/upstream.conf
if [[ $UPSTREAM_TLS == 1 ]]; then
  # The upstream speaks TLS on its port; each proxy verifies it (CA = the certificate, name localhost).
  sed -e "s|listen 127.0.0.1:18080 backlog=4096;|listen 127.0.0.1:18080 ssl backlog=4096; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:up:10m;|" \
    "$PWD/benches/nginx/upstream.conf" >"$work/upstream-tls.conf"
  upstream_conf=$work/upstream-tls.conf
  sed -e "s|proxy_pass http://origin;|proxy_pass https://origin; proxy_ssl_trusted_certificate $work/ca.crt; proxy_ssl_verify on; proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_ssl_session_reuse on;|" \
    "$proxy_conf" >"$work/proxy-upstream-tls.conf"
  proxy_conf=$work/proxy-upstream-tls.conf
  for x in a b; do
    src=$([[ $x == a ]] && echo "$CONFIG" || echo "$CONFIG_B")
    python3 - "$src" "$work/nexus-up-$x.yaml" "$work" <<'PY'
import re, sys
src, dst, work = sys.argv[1:]
out = []
for line in open(src).read().splitlines():
    if "http://127.0.0.1:18080" in line:
        out.append(line.replace("http://127.0.0.1:18080", "https://127.0.0.1:18080"))
        out.append(f'    tls: {{ ca_file: "{work}/ca.crt", server_name: localhost }}')
    else:
        out.append(line)
open(dst, "w").write("\n".join(out) + "\n")
PY
  done
  CONFIG=$work/nexus-up-a.yaml CONFIG_B=$work/nexus-up-b.yaml
  config_a=$CONFIG config_b=$CONFIG_B
fi
if [[ $TLS == 1 ]]; then
  # nginx: the same proxy with `listen ssl` on :18443 and the run's certificate.
  sed -e "s|listen 127.0.0.1:18081 backlog=4096;|listen 127.0.0.1:18443 ssl backlog=4096; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m;|" \
    "$proxy_conf" >"$work/proxy-tls.conf"
  proxy_conf=$work/proxy-tls.conf
  # Nexus: the same config with server.tls on its own port.
  for x in a b; do
    tls_port=$([[ $x == a ]] && echo 18445 || echo 18446)
    src=$([[ $x == a ]] && echo "$CONFIG" || echo "$CONFIG_B")
    python3 - "$src" "$work/nexus-$x.yaml" "$tls_port" "$work" <<'PY'
import sys
src, dst, port, work = sys.argv[1:]
text = open(src).read()
tls = (f'  tls:\n    listen: "127.0.0.1:{port}"\n    certificates:\n'
       f'      - {{ cert_file: "{work}/tls.crt", key_file: "{work}/tls.key" }}\n')
assert "server:\n" in text, "the config needs a server: block"
open(dst, "w").write(text.replace("server:\n", "server:\n" + tls, 1))
PY
  done
  config_a=$work/nexus-a.yaml config_b=$work/nexus-b.yaml
  scheme=https
  port=([nginx]=18443 [nexus_a]=18445 [nexus_b]=18446)
fi
if [[ $H2 == 1 ]]; then
  # nginx: the same proxy, its listener speaking HTTP/2 (cleartext, prior knowledge, as h2load does).
  sed -e "s|listen 127.0.0.1:18081 backlog=4096;|listen 127.0.0.1:18081 http2 backlog=4096;|" \
    "$proxy_conf" >"$work/proxy-h2.conf"
  proxy_conf=$work/proxy-h2.conf
fi
start upstream nginx -p "$work/upstream/" -c "$upstream_conf" -e "$work/upstream/error.log"
start nginx nginx -p "$work/proxy/" -c "$proxy_conf" -e "$work/proxy/error.log"
start nexus_a env NEXUS_WORKERS=1 "$NEXUS_A" --config "$config_a" \
  --listen 127.0.0.1:18085 --admin-listen 127.0.0.1:19085 --log-level warn
targets=(nginx nexus_a)
if [[ -n $NEXUS_B ]]; then
  start nexus_b env NEXUS_WORKERS=1 "$NEXUS_B" --config "$config_b" \
    --listen 127.0.0.1:18086 --admin-listen 127.0.0.1:19086 --log-level warn
  targets+=(nexus_b)
fi

header=()
[[ -n $WRK_HEADER ]] && header=(-H "$WRK_HEADER")
[[ -n $WRK_SCRIPT ]] && header+=(-s "$WRK_SCRIPT")
curl_header=()
[[ -n $WRK_HEADER ]] && curl_header=(-H "$WRK_HEADER")
[[ $H2 == 1 ]] && curl_header+=(--http2-prior-knowledge)
for t in "${targets[@]}"; do
  ok=0
  for _ in $(seq 100); do
    if [[ $(curl -sk -o /dev/null -w '%{http_code}' "${curl_header[@]}" "$scheme://127.0.0.1:${port[$t]}/") == 200 ]]; then
      ok=1
      break
    fi
    sleep 0.1
  done
  [[ $ok == 1 ]] || die "$t on :${port[$t]} does not answer 200 (see $work/$t.log)"
done

ticks() { # "utime stime" of a process and its children (nginx's worker), in clock ticks
  local user=0 sys=0 p u s
  for p in "$1" $(pgrep -P "$1" || true); do
    # A child may be gone by now (nginx's cache loader exits on its own): it counts 0.
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    user=$((user + ${u:-0})) sys=$((sys + ${s:-0}))
  done
  echo "$user $sys"
}

# One load run against a URL for some seconds: wrk, h2load with H2=1, or ab with AB=1.
load_run() { # seconds, conns, url
  if [[ $AB == 1 ]]; then
    # (-n: a bound ab never reaches in the run's seconds; -t ends it.)
    "${load[@]}" ab -q -k -c"$2" -t"$1" -n 100000000 "${header[@]}" "$3"
  elif [[ $H2 == 1 ]]; then
    "${load[@]}" h2load -c"$2" -m"$H2_STREAMS" -D "$1" "${header[@]}" "$3"
  else
    "${load[@]}" wrk -t1 -c"$2" -d"${1}s" --latency "${header[@]}" "$3"
  fi
}

samples=$work/samples.tsv
echo "round	conns	target	rps	p99_ms	cpu_us_per_req	user_us_per_req	sys_us_per_req	upstream_us_per_req" >"$samples"
echo "peer-bench: rounds=$ROUNDS duration=${DURATION}s conns=[$CONNS] config=$CONFIG script=${WRK_SCRIPT:-none} tls=$TLS upstream_tls=$UPSTREAM_TLS h2=$H2 ab=$AB targets=${targets[*]} pin=$PIN" >&2
for ((r = 1; r <= ROUNDS; r++)); do
  for c in $CONNS; do
    # Rotate the order each round, so no target always runs first (or after the same one).
    order=("${targets[@]:$((r % ${#targets[@]}))}" "${targets[@]:0:$((r % ${#targets[@]}))}")
    for t in "${order[@]}"; do
      pid_var=pid_$t
      pid=${!pid_var}
      load_run 1 "$c" "$scheme://127.0.0.1:${port[$t]}/" >/dev/null # warm-up
      # shellcheck disable=SC2154 # pid_upstream is set by start()
      before=$(ticks "$pid") up_before=$(ticks "$pid_upstream")
      out=$(load_run "$DURATION" "$c" "$scheme://127.0.0.1:${port[$t]}/")
      after=$(ticks "$pid") up_after=$(ticks "$pid_upstream")
      python3 - "$r" "$c" "$t" "$before" "$after" "$up_before" "$up_after" "$(getconf CLK_TCK)" "$out" >>"$samples" <<'PY'
import re, sys
r, c, t, before, after, up_before, up_after, hz, out = sys.argv[1:]
ms = {"us": 0.001, "ms": 1.0, "s": 1000.0}
h2 = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
ab = re.search(r"Complete requests:\s+(\d+)", out)
if ab:  # ab -k: percentiles in whole ms
    reqs = int(ab.group(1))
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    v, unit = re.search(r"\s99%\s+(\d+)", out).group(1), "ms"
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    kept = int(re.search(r"Keep-Alive requests:\s+(\d+)", out).group(1))
    if failed or kept != reqs:
        print(f"peer-bench: {t} -c{c}: {failed} failed, {reqs - kept} not kept alive", file=sys.stderr)
elif h2:  # h2load: the slowest request stands in for P99
    reqs = int(h2.group(2))
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    v, unit = re.search(r"time for request:\s+[\d.]+(?:us|ms|s)\s+([\d.]+)(us|ms|s)", out).groups()
    if int(h2.group(1)) != reqs:
        print(f"peer-bench: {t} -c{c}: {int(h2.group(1)) - reqs} requests failed", file=sys.stderr)
else:
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    v, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out).groups()
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"peer-bench: {t} -c{c}: {errors.group(1)} non-2xx answers", file=sys.stderr)
p99 = float(v) * ms[unit]
# Per request, in µs: the proxy's user and system time, and the upstream's (it shares the
# proxies' CPU when pinned, so what a proxy sends it is paid on that CPU too).
per_req = lambda a, b: [(int(y) - int(x)) / int(hz) * 1e6 / max(reqs, 1) for x, y in zip(a.split(), b.split())]
user, sys_ = per_req(before, after)
upstream = sum(per_req(up_before, up_after))
print(f"{r}\t{c}\t{t}\t{rps:.0f}\t{p99:.2f}\t{user + sys_:.1f}\t{user:.1f}\t{sys_:.1f}\t{upstream:.1f}")
PY
      echo "  round $r -c$c $t: $(tail -1 "$samples" | cut -f4) RPS" >&2
    done
  done
done

python3 - "$samples" "$H2" "${targets[@]}" <<'PY'
import csv, statistics, sys
path, h2, *targets = sys.argv[1:]
tail = "max" if h2 == "1" else "P99"
rows = list(csv.DictReader(open(path), delimiter="\t"))
at = {(r["round"], r["conns"], r["target"]): r for r in rows}
rounds = sorted({r["round"] for r in rows})
names = {"nginx": "nginx", "nexus_a": "nexus (A)", "nexus_b": "nexus (B)"}
print(f"| conns | target | RPS median | {tail} ms median | CPU µs/req (user + sys) | upstream µs/req | × nginx | {tail} × nginx (median, worst round) | B/A RPS |")
print("|---:|---|---:|---:|---|---:|---:|---|---:|")
for c in sorted({r["conns"] for r in rows}, key=int):
    for t in targets:
        mine = [at[(k, c, t)] for k in rounds]
        med = lambda f: statistics.median(float(x[f]) for x in mine)
        ratio = statistics.median(float(at[(k, c, t)]["rps"]) / float(at[(k, c, "nginx")]["rps"]) for k in rounds)
        tails = [float(at[(k, c, t)]["p99_ms"]) / float(at[(k, c, "nginx")]["p99_ms"]) for k in rounds]
        pair = ""
        if t == "nexus_b":
            pair = f"{statistics.median(float(at[(k, c, 'nexus_b')]['rps']) / float(at[(k, c, 'nexus_a')]['rps']) for k in rounds):.3f}"
        cpu = f"{med('cpu_us_per_req'):.1f} ({med('user_us_per_req'):.1f} + {med('sys_us_per_req'):.1f})"
        print(f"| {c} | {names[t]} | {med('rps'):.0f} | {med('p99_ms'):.2f} | {cpu} | {med('upstream_us_per_req'):.1f} | {ratio:.2f} "
              f"| {statistics.median(tails):.2f}, {max(tails):.2f} | {pair} |")
print(f"\nMedians over {len(rounds)} rounds; × nginx and B/A are medians of per-round ratios "
      f"(the worst round: the highest ratio). Samples: {path}")
PY
# Keep the samples; the processes stop on exit.
trap - EXIT
cleanup
