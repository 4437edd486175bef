#!/usr/bin/env bash
# Makes sure a `prometheus` binary is on PATH (the tests scrape the gateway with a real one).
# Installs Debian's package when it is absent and we are root, without starting its service: the tests
# run their own server on a free port.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "prometheus is not installed (Debian: apt-get install prometheus)" >&2
  exit 1
fi
policy=/usr/sbin/policy-rc.d
if [ -e "$policy" ]; then
  saved=$(mktemp)
  cp -p "$policy" "$saved"
else
  saved=""
fi
restore() {
  if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
}
trap restore EXIT
# 101: "action not allowed", so the package's postinst leaves its service stopped.
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod +x "$policy"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
