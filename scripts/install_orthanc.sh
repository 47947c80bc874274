#!/usr/bin/env bash
# Debian's Orthanc (a real PACS) and its DICOMweb plugin, when missing: Testing/test_dicom.py starts its own
# instance on 127.0.0.1 (the package's system service is not used). Needs root and apt-get; exits non-zero when
# it cannot install them.
set -euo pipefail
missing=()
[ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ ${#missing[@]} -eq 0 ] && exit 0
exec bash "$(dirname "$0")/apt_install.sh" "${missing[@]}"
