#!/bin/sh
# Runs every test: the C unit tests, then the busted specs. Ends with one
# line "N passed, N failed, N skipped" totalling both. B=dir tests the build
# in dir (default build/).
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
export LUMEN_LIB="$PWD/$B/liblumen.so"
out=$B/test-results
mkdir -p "$out"
passed=0; failed=0

# C unit tests print their own "N passed, N failed" last.
if make --no-print-directory -s B="$B" "$B/tests/c_tests" >"$out/c-build.log" 2>&1; then
  "$B/tests/c_tests" | tee "$out/c.log"
  line=$(tail -n 1 "$out/c.log")
else
  cat "$out/c-build.log"; line="0 passed, 1 failed"
fi
passed=$((passed + $(echo "$line" | sed -n 's/^\([0-9]*\) passed.*/\1/p')))
failed=$((failed + $(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')))

# Busted specs, as TAP: "ok N", "ok N - # SKIP" and "not ok N" lines.
{ busted -o TAP "$@"; echo $? >"$out/busted.rc"; } | tee "$out/spec.log"
s=$(grep -c '^ok .*# SKIP' "$out/spec.log")
p=$(($(grep -c '^ok ' "$out/spec.log") - s))
f=$(grep -c '^not ok ' "$out/spec.log")
# a spec file that fails to load shows up as "not ok"; a crash or no test at
# all must fail too
[ "$(cat "$out/busted.rc")" -ne 0 ] && [ "$f" -eq 0 ] && f=1
[ "$p" -eq 0 ] && [ "$f" -eq 0 ] && f=1
passed=$((passed + p)); failed=$((failed + f))

echo "$passed passed, $failed failed, $s skipped"
[ "$failed" -eq 0 ]
