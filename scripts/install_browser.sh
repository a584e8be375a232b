#!/usr/bin/env bash
# The headless browser that tests/test_viewer.py drives: Debian's chromium and chromium-driver (apt).
# Called by `make install`. It never fails the install: where apt-get or root is missing it says how to
# get the browser, and the browser tests skip with the same advice.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
advice="install them yourself (apt-get install -y chromium chromium-driver, as root) to run the viewer's browser tests"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: no apt-get here, so no headless chromium for tests/test_viewer.py: $advice" >&2
    exit 0
fi
as_root=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root="sudo -n"
    else
        echo "note: not root and no password-less sudo, so no headless chromium for tests/test_viewer.py: $advice" >&2
        exit 0
    fi
fi
install() { $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
echo "installing chromium and chromium-driver with apt-get (the viewer's browser tests)" >&2
# a fresh machine may have no package lists yet: update once, then try again
if ! install && ! { $as_root apt-get update -q >/dev/null && install; }; then
    echo "note: apt-get could not install chromium: $advice" >&2
fi
exit 0
