#!/usr/bin/env bash
# Tools for the real-browser test (tests/test_browser.py): Debian's chromium and the npm
# package playwright-core that drives it. Idempotent; never fatal: when something cannot be
# installed it prints one line and exits 0, and the browser test skips with its own reason.
# Browsers are never downloaded by playwright (`playwright install` is not used).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BROWSER_DIR="$ROOT/tests/browser"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"

note() { printf '[setup-browser] %s\n' "$*"; }

# 1. chromium (Debian's package, ~30 s)
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    note "installing Debian's chromium"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >/tmp/setup_browser_apt.log 2>&1; then
      note "apt-get install chromium failed (see /tmp/setup_browser_apt.log); the browser test will skip"
      exit 0
    fi
  else
    note "no $CHROMIUM and no root apt-get: install chromium yourself to run the browser test (it skips)"
    exit 0
  fi
fi

# 2. playwright-core from tests/browser/package-lock.json
if ! command -v npm >/dev/null 2>&1; then
  note "npm not found: install Node.js >= 20 to run the browser test (it skips)"
  exit 0
fi
if [ ! -f "$BROWSER_DIR/node_modules/playwright-core/package.json" ] \
   || [ "$BROWSER_DIR/package-lock.json" -nt "$BROWSER_DIR/node_modules/.package-lock.json" ]; then
  note "installing playwright-core into tests/browser/node_modules"
  if ! (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error >/tmp/setup_browser_npm.log 2>&1); then
    note "npm ci failed (see /tmp/setup_browser_npm.log); the browser test will skip"
    exit 0
  fi
fi
exit 0
