#!/usr/bin/env bash
# System packages the tests use beyond Python: a PostgreSQL server (multi-machine storage
# tests start their own on loopback), headless Chromium (dashboard and report tests) and strace
# (a bundle swap interrupted inside a slowed rename, tests/test_bundle_swap.py).
# Installs what is missing when run as root with apt-get; otherwise says what is missing,
# and those tests are skipped with that reason.
set -u
need=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v strace >/dev/null 2>&1 || need+=(strace)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "warning: could not install ${need[*]}; the tests that need them will be skipped"
else
  echo "note: ${need[*]} not installed (needs root and apt-get); the tests that need them will be skipped"
fi
exit 0
