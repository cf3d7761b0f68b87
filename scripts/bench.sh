#!/usr/bin/env bash
# Benchmarks: builds release binaries and prints one table per section, each
# figure beside a baseline measured in the same run.
#   scripts/bench.sh [SECTION...] [--seconds N] [--repeats N]
#                    [--launcher-circles 1,10,50] [--memory-circles 200]
# Sections: tasks caps cost launcher websocket supervisor systemd (default:
# all). Opt-in long run (minutes, ~10 GiB of workers, out of CI):
#   scripts/bench.sh launcher --launcher-circles 1000 --repeats 1
# The systemd section installs real services, so it runs inside a private
# systemd (scripts/systemd-sandbox, state in target/bench-sandbox) and needs
# root; the others run on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "bench needs redis-server (apt-get install -y redis-server)" >&2; exit 1; }

sections=() opts=()
while (($#)); do
  case $1 in
    --*=*) opts+=("$1") ;;
    --*) opts+=("$1"); (($# > 1)) && { opts+=("$2"); shift; } ;;
    *) sections+=("$1") ;;
  esac
  shift
done
want_systemd=0 host_sections=()
if ((${#sections[@]} == 0)); then
  want_systemd=1
else
  for s in "${sections[@]}"; do
    if [[ $s == systemd ]]; then want_systemd=1; else host_sections+=("$s"); fi
  done
fi

cargo build --release --workspace --bins --locked -q
# The bench finds the worker, launcher and server next to itself in target/release.
bench=target/release/circles-bench

can_sandbox=1
[[ $EUID -eq 0 && -x /lib/systemd/systemd ]] && command -v unshare >/dev/null || can_sandbox=0

# Host sections first.
if ((${#sections[@]} == 0)); then
  "$bench" --skip systemd "${opts[@]}"
elif ((${#host_sections[@]})); then
  "$bench" "${host_sections[@]}" "${opts[@]}"
fi

if ((want_systemd)); then
  if ((!can_sandbox)); then
    msg="the systemd section needs root, util-linux and systemd to boot a private systemd (scripts/systemd-sandbox)"
    if ((${#sections[@]})); then echo "bench: $msg" >&2; exit 1; fi
    printf '\n## systemd: skipped — %s\n' "$msg"
    exit 0
  fi
  state=target/bench-sandbox
  trap 'scripts/systemd-sandbox stop "$state" >/dev/null || true' EXIT
  scripts/systemd-sandbox start "$state" >/dev/null
  scripts/systemd-sandbox exec "$state" -- "$bench" systemd "${opts[@]}"
fi
