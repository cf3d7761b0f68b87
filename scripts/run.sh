#!/usr/bin/env bash
# The one run command for circles: the demo circles up on a fresh machine.
#
#   scripts/run.sh [LAUNCHER OPTIONS…]
#
# 1. Redis: if nothing answers at the Redis URL (REDIS_URL, default
#    redis://127.0.0.1:6379) and redis-server is not installed, installs it
#    with apt-get when run as root (as scripts/test.sh does), else says
#    exactly what to run and exits 1. (The launcher then starts a private
#    redis-server for this run, with its data under launch_data/redis.)
# 2. Builds the binaries (release) with cargo.
# 3. Runs the launcher in direct mode on examples/circles.json: two circles
#    with their init scripts, a status table, Ctrl+C stops everything.
#
# Environment:
#   CIRCLES_CONFIG=FILE     circles.json to launch (default examples/circles.json)
#   CIRCLES_NO_INSTALL=1    never install anything, even as root: print the hint
#   CIRCLES_PROFILE=debug   a debug build (quicker to build, slower to run)
#   CIRCLES_LAUNCHER=PATH   run this launcher binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The Redis the launcher will use: --redis-url among the options wins over
# REDIS_URL, as in the launcher itself.
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
prev=
for arg in "$@"; do
  case $arg in
    --redis-url=*) redis_url=${arg#--redis-url=} ;;
    *) [[ $prev == --redis-url ]] && redis_url=$arg ;;
  esac
  prev=$arg
done

# Whether the URL names a Redis on this machine (plain redis:// to
# 127.0.0.1, localhost or ::1): only then can a missing redis-server be the
# reason nothing answers. Any other URL is the launcher's to check.
redis_is_local() {
  local rest=${redis_url#redis://}
  [[ $rest != "$redis_url" ]] || return 1
  rest=${rest##*@}
  rest=${rest%%/*}
  host=${rest%:*} port=${rest##*:}
  [[ $port != "$rest" && -n $port ]] || port=6379
  [[ $host == "[::1]" ]] && host=::1
  case $host in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac
}

# Whether something accepts connections at that local host and port.
redis_answers() {
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

if redis_is_local && ! command -v redis-server >/dev/null && ! redis_answers; then
  if [[ $EUID -eq 0 && -z ${CIRCLES_NO_INSTALL:-} ]] && command -v apt-get >/dev/null; then
    say "installing redis-server (nothing answers at $redis_url)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends redis-server >/dev/null ||
      { apt-get update >/dev/null && apt-get install -y --no-install-recommends redis-server >/dev/null; }
    command -v redis-server >/dev/null ||
      { echo "error: apt-get installed redis-server, but it is not on PATH ($PATH)" >&2; exit 1; }
  else
    cat >&2 <<HINT
error: nothing answers at $redis_url and redis-server is not installed.
Install it, then run scripts/run.sh again:
  Debian/Ubuntu:  sudo apt-get install -y redis-server
  macOS:          brew install redis
(or point REDIS_URL at a Redis that runs elsewhere)
HINT
    exit 1
  fi
fi

launcher=${CIRCLES_LAUNCHER:-}
if [[ -z $launcher ]]; then
  profile=${CIRCLES_PROFILE:-release}
  case $profile in
    release) build=(cargo build --release --locked --bins) ;;
    debug) build=(cargo build --locked --bins) ;;
    *) echo "error: CIRCLES_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
  esac
  say "building ($profile)"
  "${build[@]}"
  launcher=${CARGO_TARGET_DIR:-target}/$profile/launcher
fi

# The demo's circles.json, unless the options name circles themselves.
config=${CIRCLES_CONFIG:-examples/circles.json}
for arg in "$@"; do
  case $arg in
    -c | -c* | --circle | --circle=* | --config | --config=* | *.json) config= ;;
  esac
done
if [[ -n $config ]]; then
  say "launching the circles of $config (Ctrl+C stops them)"
  exec "$launcher" "$@" "$config"
fi
say "launching (Ctrl+C stops the circles)"
exec "$launcher" "$@"
