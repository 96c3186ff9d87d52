#!/usr/bin/env sh
# Install Debian's chromium for the labeling page's browser test, unless /usr/bin/chromium is already there.
# Idempotent and quiet: prints one line, and apt-get's output only if the install fails.
set -eu

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: apt-get not found; install chromium yourself (the browser test is skipped without it)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "installing chromium with apt-get ..."
if ! { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_browser.sh: apt-get install chromium failed" >&2
    exit 1
fi
