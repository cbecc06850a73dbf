#!/usr/bin/env bash
# System packages the test suite needs beyond Python: headless Chromium (the
# report screenshot test renders report.html), its WebDriver (the studio's
# browser tests drive it through Selenium) and a Korean font, so Hangul
# renders as glyphs instead of empty boxes. Debian/Ubuntu packages only.
# Idempotent and quiet: does nothing when both are already there.
set -euo pipefail

have_browser() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
have_driver() { command -v chromedriver >/dev/null 2>&1; }
have_korean_font() { command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=ko family 2>/dev/null | head -n 1)" ]; }

if have_browser && have_driver && have_korean_font; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: apt-get not found; install Chromium, its chromedriver and a Korean font (Noto Sans CJK KR or Nanum) by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# apt's chatter goes to a log that is shown only when something fails.
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-noto-cjk fontconfig; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-system-deps: apt-get failed" >&2
    exit 1
fi
have_browser && have_driver && have_korean_font || { echo "install-system-deps: chromium, chromedriver or a Korean font is still missing" >&2; exit 1; }
