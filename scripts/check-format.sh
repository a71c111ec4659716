#!/bin/sh
# SPDX-License-Identifier: MIT
# Is the tree in house style? C against .clang-format; every source file against
# .editorconfig's basics (no trailing whitespace, a final newline, no tabs in C/Lua).
# Fix C with: clang-format -i $(git ls-files '*.c' '*.h')
set -eu
cd "$(dirname "$0")/.."

c_files=$(find src tests bench -name '*.[ch]' | sort)
src_files=$(find src tests bench lua scripts examples -type f \
    \( -name '*.[ch]' -o -name '*.lua' -o -name '*.sh' -o -name '*.py' -o -name '*.cmake' \) | sort)
bad=0

if ! clang-format --dry-run --Werror $c_files; then
    echo "check-format: C files differ from .clang-format (see above)" >&2
    bad=1
fi
for f in $src_files CMakeLists.txt; do
    if grep -n '[[:space:]]$' "$f" >/dev/null; then
        echo "check-format: $f: trailing whitespace on line(s) $(grep -n '[[:space:]]$' "$f" | cut -d: -f1 | tr '\n' ' ')" >&2
        bad=1
    fi
    if [ -s "$f" ] && [ "$(tail -c1 "$f" | od -An -c | tr -d ' ')" != '\n' ]; then
        echo "check-format: $f: no newline at the end" >&2
        bad=1
    fi
    case "$f" in
    *.c | *.h | *.lua)
        if grep -n "$(printf '\t')" "$f" >/dev/null; then
            echo "check-format: $f: tab indentation" >&2
            bad=1
        fi
        ;;
    esac
done
[ $bad -eq 0 ] && echo "check-format: ok ($(echo $src_files | wc -w) files)"
exit $bad
