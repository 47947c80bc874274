#!/usr/bin/env bash
# Install the given Debian packages with apt-get (as root, else through sudo); exits non-zero when it cannot.
# Used by install_chromium.sh and install_orthanc.sh for the packages they find missing.
set -euo pipefail
[ $# -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "apt-get not found; install $* by hand" >&2; exit 1; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing $* (apt-get)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
