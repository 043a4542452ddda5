# Shared by scripts/bench-server and scripts/bench-ab (sourced, not run).
#
# The method of issue #14: the servers under test (`iotpki serve`, and the
# PostgreSQL cluster when there is one) pinned to one core, `iotpki loadgen` to
# another (taskset), and the crypto floor measured on the servers' core in the
# same run: one ECDSA P-256 sign plus one verify (`openssl speed ecdsap256`).
#
#   BENCH_SERVER_CORE=0      the servers' core
#   BENCH_CLIENT_CORE=1      the load generator's core
#   BENCH_FLOOR_SECONDS=2    `openssl speed -seconds` for each floor measurement
#   BENCH_NO_PIN=1           no taskset (e.g. a one-core machine): the figures then measure the machine

bench_server_core="${BENCH_SERVER_CORE:-0}"
bench_client_core="${BENCH_CLIENT_CORE:-1}"
bench_floor_s="${BENCH_FLOOR_SECONDS:-2}"
bench_pids=()
bench_pgdir=""

bench_need() {
  command -v openssl >/dev/null || { echo "$0: openssl is needed (apt-get install openssl)" >&2; exit 1; }
  command -v taskset >/dev/null || { echo "$0: taskset is needed (apt-get install util-linux)" >&2; exit 1; }
  if [ "${BENCH_NO_PIN:-0}" != 1 ] && [ "$(nproc)" -lt 2 ]; then
    echo "$0: pinning needs two cores (this machine has $(nproc)); BENCH_NO_PIN=1 runs unpinned" >&2
    exit 1
  fi
}

# Run "$@" on core $1 (or anywhere with BENCH_NO_PIN=1).
bench_on() {
  local core="$1"; shift
  if [ "${BENCH_NO_PIN:-0}" = 1 ]; then "$@"; else taskset -c "$core" "$@"; fi
}

bench_loadavg() { awk '{print $1}' /proc/loadavg; }

# The crypto floor on the servers' core, as one JSON object:
# {"sign_per_s", "verify_per_s", "floor_ms"} (floor_ms = one sign + one verify).
bench_floor() {
  local sp sign verify
  sp=$(bench_on "$bench_server_core" openssl speed -seconds "$bench_floor_s" ecdsap256 2>/dev/null \
    | awk '/nistp256/ {print $(NF-1), $NF}' | tail -1)
  sign=${sp% *}; verify=${sp#* }
  [ -n "$sign" ] && [ -n "$verify" ] || { echo "$0: could not read openssl speed's ecdsap256 line" >&2; exit 1; }
  python3 -c 'import json,sys; s,v=float(sys.argv[1]),float(sys.argv[2]); print(json.dumps({"sign_per_s": s, "verify_per_s": v, "floor_ms": 1000/s + 1000/v}))' "$sign" "$verify"
}

# bench_serve BIN DIR LOG [serve args...]: start `iotpki serve` on the servers' core;
# sets $bench_url, $bench_http and $bench_pid.
bench_serve() {
  local bin="$1" dir="$2" log="$3"; shift 3
  # Not through bench_on: a function run in the background is a subshell, and $! must be the server.
  local pin=(taskset -c "$bench_server_core")
  [ "${BENCH_NO_PIN:-0}" != 1 ] || pin=()
  "${pin[@]}" "$bin" serve --dir "$dir" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 "$@" > "$log" 2>/dev/null &
  bench_pid=$!
  bench_pids+=("$bench_pid")
  for _ in $(seq 200); do grep -q "OCSP on" "$log" 2>/dev/null && break; sleep 0.1; done
  bench_url=$(sed -n 's/^listening on //p' "$log")
  bench_http=$(sed -n 's/^CRL and OCSP on //p' "$log")
  [ -n "$bench_url" ] && [ -n "$bench_http" ] || { echo "$0: the server did not start ($log)" >&2; exit 1; }
}

# A throwaway PostgreSQL cluster, its processes (and the backends it forks later)
# pinned to the servers' core; sets $bench_pgdir and $bench_pgurl (its database "postgres").
bench_pg_start() {
  local here; here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  bench_pgdir=$(mktemp -d /tmp/bench-pg.XXXXXX)
  bench_pgurl=$("$here/pg" start "$bench_pgdir" | sed -n 's/^export IOTPKI_TEST_PG=//p')
  [ -n "$bench_pgurl" ] || { echo "$0: PostgreSQL did not start" >&2; exit 1; }
  if [ "${BENCH_NO_PIN:-0}" != 1 ]; then
    local pm; pm=$(head -1 "$bench_pgdir/data/postmaster.pid")
    for p in "$pm" $(pgrep -P "$pm"); do taskset -a -p -c "$bench_server_core" "$p" >/dev/null; done
  fi
}

# A new database NAME in the cluster; prints its URL.
bench_pg_db() {
  local name="$1" bin="${IOTPKI_PG_BIN:-/usr/lib/postgresql/15/bin}"
  local hostport=${bench_pgurl#postgres://iotpki@}; hostport=${hostport%%/*}
  "$bin/psql" -q -h "${hostport%:*}" -p "${hostport#*:}" -U iotpki -d postgres -c "CREATE DATABASE $name" >/dev/null
  echo "postgres://iotpki@$hostport/$name"
}

# Before a timed run on database URL: its tables vacuumed and analyzed, and a
# checkpoint, untimed. Without it, autovacuum and the timed checkpoints land in
# some runs and not others: two runs of one build on two databases of one cluster
# then differed up to 3-fold, round by round.
bench_pg_settle() {
  local url="$1" bin="${IOTPKI_PG_BIN:-/usr/lib/postgresql/15/bin}"
  local hostport=${url#postgres://iotpki@}; hostport=${hostport%%/*}
  local db=${url##*/}
  "$bin/psql" -q -h "${hostport%:*}" -p "${hostport#*:}" -U iotpki -d "$db" -c "VACUUM (ANALYZE)" -c "CHECKPOINT" >/dev/null
}

# bench_pg_nodes BIN DIR DB SERIALS QUOTA BATCH STATION STATION_OUT: an authority in DIR on
# the database URL DB, batch BATCH of the serials in the file SERIALS with QUOTA, two `serve`
# nodes on it (logs DIR.node1.log and DIR.node2.log), and station STATION for BATCH, its
# files in STATION_OUT; sets $bench_url1, $bench_url2, $bench_pid1 and $bench_pid2.
bench_pg_nodes() {
  local bin="$1" dir="$2" db="$3" serials="$4" quota="$5" batch="$6" station="$7" out="$8"
  "$bin" init --dir "$dir" --database "$db" >/dev/null
  "$bin" batch create --dir "$dir" --id "$batch" --product bench --serials "$serials" --quota "$quota" >/dev/null 2>&1
  bench_serve "$bin" "$dir" "$dir.node1.log" --database "$db"; bench_url1=$bench_url; bench_pid1=$bench_pid
  bench_serve "$bin" "$dir" "$dir.node2.log" --database "$db"; bench_url2=$bench_url; bench_pid2=$bench_pid
  "$bin" station add "$station" --dir "$dir" --batches "$batch" --out "$out" --server "$bench_url1" >/dev/null
}

# `--watch-pid P` for the given serve pids and, with a cluster, its postmaster and backends.
bench_watch() {
  local w=("$@")
  if [ -n "$bench_pgdir" ]; then
    local pm; pm=$(head -1 "$bench_pgdir/data/postmaster.pid")
    # shellcheck disable=SC2207
    w+=("$pm" $(pgrep -P "$pm"))
  fi
  for p in "${w[@]}"; do printf -- '--watch-pid %s ' "$p"; done
}

bench_cleanup() {
  for p in "${bench_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${bench_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$bench_pgdir" ]; then
    "$(dirname "${BASH_SOURCE[0]}")/pg" stop "$bench_pgdir" >/dev/null 2>&1 || true
    rm -rf "$bench_pgdir"
  fi
}
