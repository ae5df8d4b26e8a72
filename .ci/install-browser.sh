#!/usr/bin/env bash
# Install Debian's chromium for tests/test_browser.py (Playwright drives it through executable_path:
# Playwright's own browser downloads are not possible in CI). Needs root (apt-get); a no-op when
# /usr/bin/chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || true)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y chromium
/usr/bin/chromium --version
