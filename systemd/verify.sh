#!/usr/bin/env bash
# `systemd-analyze verify` of both units, as CI runs it (.ci/run); `--security` also prints
# `systemd-analyze security --offline` scores (systemd/README.md quotes them).
#
# verify checks that ExecStart= programs exist and are executable, so the units are checked
# as copies whose /usr/local/bin paths point at stand-in executables; nothing else changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd/verify.sh: systemd-analyze missing (apt-get install systemd)" >&2
  exit 69
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
for b in backend-agent gateway-agent; do
  printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/$b"
  chmod 0755 "$tmp/bin/$b"
  sed "s#/usr/local/bin/#$tmp/bin/#g" "$here/$b.service" >"$tmp/$b.service"
done
systemd-analyze verify "$tmp/backend-agent.service" "$tmp/gateway-agent.service"
echo "systemd-analyze verify: backend-agent.service gateway-agent.service OK"
if [ "${1:-}" = "--security" ]; then
  for b in backend-agent gateway-agent; do
    systemd-analyze security --offline=yes "$tmp/$b.service" | tail -n 1
  done
fi
