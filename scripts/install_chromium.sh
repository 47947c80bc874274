#!/usr/bin/env bash
# Debian's chromium (the browser of the web page's end-to-end tests) and Mesa's EGL (VTK's offscreen rendering),
# when missing. Needs root and apt-get; exits non-zero when it cannot install them.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "apt-get not found; install ${missing[*]} by hand" >&2; exit 1; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing ${missing[*]} (apt-get)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
