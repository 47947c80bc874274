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
exec bash "$(dirname "$0")/apt_install.sh" "${missing[@]}"
