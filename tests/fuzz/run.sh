#!/bin/sh
# tests/fuzz/run.sh: runs the image readers' fuzz targets one after another
# (make fuzz builds them first), each for FUZZ_SECONDS under nice with its
# dictionary of format tokens (tests/fuzz/<reader>.dict), and writes
# a report per reader to $FUZZ_B/report/<reader>.txt: executions, C coverage
# (libFuzzer's cov and ft), Lua line coverage of the reader over the corpus,
# and the findings. Exits 1 when any reader has a finding.
#
# Environment: FUZZ_READERS (nifti mha png dicom), FUZZ_SECONDS (600),
# FUZZ_MAX_LEN (largest input, 65536 bytes), FUZZ_B (build-fuzz), B (the
# plain build, which writes lumen's own seed files), LUMEN_DATA (where
# `lumen data fetch itk_examples` unpacks ITK's examples, used as seeds).
cd "$(dirname "$0")/../.." || exit 1
B=${B:-build}
FB=${FUZZ_B:-build-fuzz}
READERS=${FUZZ_READERS:-nifti mha png dicom}
SECONDS_EACH=${FUZZ_SECONDS:-600}
MAX_LEN=${FUZZ_MAX_LEN:-65536}
PY=${LUMEN_PYTHON:-/usr/bin/python3}
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"

# Seeds: rebuilt each time from the real test files and lumen's writers.
rm -rf "$FB/seeds"
mkdir -p "$FB/seeds" "$FB/report" "$FB/logs" "$FB/tmp"
"$B/lumen" data fetch itk_examples >"$FB/logs/itk_fetch.log" 2>&1 ||
  echo "fuzz: ITK example data not fetched (see $FB/logs/itk_fetch.log); seeding without it"
itk=$("$B/lumen" -e "local d = require('lumen.data').cache_dir() .. '/insighttoolkit5-examples/usr/share/doc/insighttoolkit5-examples/examples/Data'
  local f = io.open(d .. '/Circle.png') if f then f:close() print(d) end" 2>/dev/null)
"$PY" -W ignore tests/fuzz/seeds.py "$FB/seeds" "$MAX_LEN" $itk || exit 1
LUMEN_LIB="$PWD/$B/liblumen.so" luajit tests/fuzz/seeds.lua "$FB/seeds" || exit 1

failed=0
summary=""
for r in $READERS; do
  corpus="$FB/corpus/$r" findings="$FB/findings/$r" log="$FB/logs/$r.log" report="$FB/report/$r.txt"
  mkdir -p "$corpus" "$findings"
  echo "fuzz: $r for ${SECONDS_EACH}s ($(ls "$FB/seeds/$r" | wc -l) seeds, corpus $(ls "$corpus" | wc -l))"
  # -timeout: seconds per input. -malloc_limit_mb: one allocation that large
  # is a finding (something trusted a header): a 64 KB input can rightly
  # need about 270 MB (deflate's 1032:1, then int8 widened to i32), 2 GB
  # and more is a claim no file of that size backs. -rss_limit_mb: all of it.
  LUMEN_FUZZ_TMP="$PWD/$FB/tmp" nice -n 19 "$FB/fuzz_$r" "$corpus" "$FB/seeds/$r" \
    -dict="tests/fuzz/$r.dict" -max_total_time="$SECONDS_EACH" -max_len="$MAX_LEN" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -detect_leaks=0 -print_final_stats=1 -artifact_prefix="$findings/" >"$log" 2>&1
  rc=$?
  # the Lua lines the seeds and the corpus reach (a replay: -runs=0)
  LUMEN_FUZZ_TMP="$PWD/$FB/tmp" LUMEN_FUZZ_LINES="$PWD/$FB/report/$r.lines" nice -n 19 "$FB/fuzz_$r" "$corpus" \
    "$FB/seeds/$r" -runs=0 -max_len="$MAX_LEN" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 >"$FB/logs/$r.replay.log" 2>&1
  status=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1)
  {
    echo "reader:     $r ($SECONDS_EACH s, max input $MAX_LEN bytes, log $log)"
    echo "executions: $(sed -n 's/^stat::number_of_executed_units: *//p' "$log")" \
      "($(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")/s)," \
      "new inputs: $(sed -n 's/^stat::new_units_added: *//p' "$log")," \
      "peak RSS: $(sed -n 's/^stat::peak_rss_mb: *//p' "$log") MB"
    echo "last:       $status"
    echo "Lua lines reached by the seeds and the corpus ($(($(ls "$FB/seeds/$r" | wc -l) + $(ls "$corpus" | wc -l))) inputs):"
    luajit tests/fuzz/coverage.lua "$FB/report/$r.lines" lua/lumen/image/$r.lua lua/lumen/image.lua | sed 's/^/  /'
    if [ "$rc" -ne 0 ]; then
      echo "FINDING (libFuzzer exit $rc):"
      grep -E '^==[0-9]+==ERROR|^==fuzz==|^SUMMARY|runtime error|Test unit written|ERROR: libFuzzer' "$log" | head -n 8 | sed 's/^/  /'
      grep -A3 '^==fuzz==' "$log" | sed -n '2,4p' | sed 's/^/  /'
    else
      echo "findings:   none"
    fi
  } >"$report"
  cat "$report"
  [ "$rc" -ne 0 ] && failed=1
  summary="$summary
  $r: $([ "$rc" -eq 0 ] && echo ok || echo FINDING) - $(echo "$status" | sed 's/ *MS:.*//; s/ L: .*//')"
done
rm -rf "$FB/tmp" # scratch folders of targets that stopped at a finding
echo "fuzz summary:$summary"
exit $failed
