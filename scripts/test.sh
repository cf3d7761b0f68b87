#!/usr/bin/env bash
# The one test command for circles.
#
#   scripts/test.sh            fmt check, clippy -D warnings, build, all tests
#
# It makes sure the real components the tests use are installed (redis-server,
# plistutil, systemd, iproute2, and Chromium with its chromedriver for the web
# console's browser tests), installing them with apt-get when missing and
# root. The test with several hosts (launcher/tests/hosts_netns.rs) makes
# network namespaces with scripts/netns-hosts: it needs root and `ip`, skips
# loudly without them, and fails instead with CIRCLES_CI=1.
# Tests that need a booted systemd live in test targets named `systemd_*`; on
# the host they skip loudly, then this script boots a private systemd
# (scripts/systemd-sandbox) and runs them inside it for real. With
# CIRCLES_CI=1 (set by .ci/run) a sandbox that cannot boot fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

need_pkgs=()
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v plistutil >/dev/null || need_pkgs+=(libplist-utils)
[[ -x /lib/systemd/systemd ]] || need_pkgs+=(systemd)
command -v dbus-daemon >/dev/null || need_pkgs+=(dbus)
command -v unshare >/dev/null && command -v nsenter >/dev/null || need_pkgs+=(util-linux)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v pgrep >/dev/null || need_pkgs+=(procps)
# User-scope units are reached over the user's session bus.
[[ -e /usr/lib/systemd/user/dbus.socket ]] || need_pkgs+=(dbus-user-session)
# The web console's tests drive a real headless browser (supervisor/tests/console.rs);
# with CIRCLES_CI=1 they fail rather than skip without it.
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
if ((${#need_pkgs[@]})); then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null ||
      { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null; }
  else
    echo "missing: ${need_pkgs[*]} — install them (e.g. sudo apt-get install -y ${need_pkgs[*]})" >&2
    command -v redis-server >/dev/null || exit 1
  fi
fi

say "cargo fmt --check"
cargo fmt --all --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "build"
cargo build --workspace --bins --examples --locked
cargo test --workspace --locked --no-run

say "tests (host)"
cargo test --workspace --locked --no-fail-fast

sandbox_ok=1
[[ $EUID -eq 0 && -x /lib/systemd/systemd ]] && command -v unshare >/dev/null || sandbox_ok=0
if ((sandbox_ok)); then
  say "tests inside a private systemd (scripts/systemd-sandbox)"
  state=$PWD/target/systemd-sandbox
  trap 'scripts/systemd-sandbox stop "$state" >/dev/null || true' EXIT
  scripts/systemd-sandbox start "$state" >/dev/null
  scripts/systemd-sandbox exec "$state" -- env CIRCLES_REQUIRE_SYSTEMD=1 \
    cargo test --workspace --locked --no-fail-fast --test 'systemd_*'
else
  msg="SKIPPED: the systemd tests need root, util-linux and systemd to boot a private systemd"
  if [[ ${CIRCLES_CI:-} == 1 ]]; then echo "FAIL: $msg" >&2; exit 1; fi
  printf '\n\033[1;33m!!! %s !!!\033[0m\n' "$msg" >&2
fi

say "all tests passed"
