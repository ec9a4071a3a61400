#!/bin/sh
# Inside an official engine image (Debian/Ubuntu based): trust extra CAs, then add the tools
# harness's watchdog runs in the container: py-spy (pip), procps and gdb (apt, best effort).
# Environment: PIP_INDEX_URL, WHEELHOUSE_URL, OFFLINE=1 (no index, no apt).
set -eu
for f in /tmp/harness-certs/*.crt; do
  [ -f "$f" ] || continue
  cp "$f" "/usr/local/share/ca-certificates/harness-$(basename "$f")"
done
rm -rf /tmp/harness-certs
if command -v update-ca-certificates >/dev/null; then update-ca-certificates >/dev/null; fi
export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt

if [ "${OFFLINE:-0}" = 1 ]; then
  missing=""
  for tool in ps gdb; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
  [ -z "$missing" ] || echo "warning: offline build: apt skipped; missing:$missing" >&2
elif command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends procps gdb >/dev/null \
    || echo "warning: apt-get could not install procps/gdb" >&2
  rm -rf /var/lib/apt/lists/*
fi

if [ "${OFFLINE:-0}" = 1 ]; then src="--no-index"; else src="--index-url ${PIP_INDEX_URL:-https://pypi.org/simple}"; fi
links="--find-links /wheelhouse"
[ -z "${WHEELHOUSE_URL:-}" ] || links="$links --find-links $WHEELHOUSE_URL"
# The engines' Python may be externally managed (PEP 668) or uv-managed: try in that order.
python3 -m pip install -q --no-cache-dir $src $links py-spy \
  || python3 -m pip install -q --no-cache-dir --break-system-packages $src $links py-spy \
  || uv pip install --system $src $links py-spy
command -v py-spy >/dev/null
