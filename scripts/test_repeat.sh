#!/usr/bin/env bash
# Runs the test suite N times on each leg from a clean clone of HEAD and reports every failure:
# a test that fails in one run of N is flaky, and a flaky test is a defect.
#
#   test_repeat.sh [N]        N runs per leg (default 3), legs alternating: floor, latest, floor, ...
#
# PYTEST_ARGS  passed to every pytest run (e.g. "tests/test_soak.py" or "-k catalog"); default: the
#              whole suite, as `make test` runs it.
# LEGS         "floor latest" (default), or one of them.
#
# The clone is of the last commit (uncommitted changes are not tested) and has none of the
# checkout's untracked files; it links the checkout's environments (.venv, .venv-latest, .comfyui,
# .comfyui-latest, .test-assets, tests/browser/node_modules), which `make test-repeat` builds
# first. Logs stay in the printed folder; the clone is removed at the end.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-3}"
LEGS="${LEGS:-floor latest}"
case "$RUNS" in ''|*[!0-9]*|0) echo "test_repeat.sh: N must be a positive number, not '$RUNS'" >&2; exit 2 ;; esac

WORK="$(mktemp -d "${TMPDIR:-/tmp}/selective-control-test-repeat-XXXXXX")"
CLONE="$WORK/clone"
git clone --quiet "$ROOT" "$CLONE" || exit 2
trap 'rm -rf "$CLONE"' EXIT
for env in .venv .venv-latest .comfyui .comfyui-latest .test-assets tests/browser/node_modules; do
  if [ -e "$ROOT/$env" ]; then ln -s "$(readlink -f "$ROOT/$env")" "$CLONE/$env"; fi
done
echo "test-repeat: $RUNS run(s) per leg ($LEGS) of $(git -C "$CLONE" log -1 --format='%h %s' | cut -c1-70)"
echo "test-repeat: clone $CLONE, logs in $WORK"

summary=()
failed_runs=0
for run in $(seq 1 "$RUNS"); do
  for leg in $LEGS; do
    log="$WORK/$leg-$run.log"
    case "$leg" in
      floor)  command=(env -u COMFYUI_PATH "$CLONE/.venv/bin/python" -m pytest -q) ;;
      latest) command=(env COMFYUI_PATH="$CLONE/.comfyui-latest" "$CLONE/.venv-latest/bin/python" -m pytest -q) ;;
      *) echo "test_repeat.sh: LEGS holds floor and/or latest, not '$leg'" >&2; exit 2 ;;
    esac
    started=$SECONDS
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words on purpose
    (cd "$CLONE" && "${command[@]}" ${PYTEST_ARGS:-}) >"$log" 2>&1
    status=$?
    result="$(grep -E '(passed|failed|errors?|deselected|skipped|no tests ran).* in [0-9.]+s' "$log" | tail -1 \
              | tr -d '=' | xargs)"
    line="$leg run $run: exit $status, ${result:-no pytest summary (see $log)}, $((SECONDS - started)) s"
    echo "test-repeat: $line"
    summary+=("$line")
    if [ "$status" -ne 0 ]; then
      failed_runs=$((failed_runs + 1))
      if ! grep -E '^(FAILED|ERROR) ' "$log" | sed "s/^/    $leg run $run: /" | tee -a "$WORK/failures.txt" \
          | grep -q .; then
        echo "    $leg run $run: pytest exited $status with no failed test named (see $log)" | tee -a "$WORK/failures.txt"
      fi
    fi
  done
done

echo
echo "test-repeat summary ($RUNS run(s) per leg, logs in $WORK):"
printf '  %s\n' "${summary[@]}"
if [ "$failed_runs" -ne 0 ]; then
  echo "test-repeat: $failed_runs run(s) failed; every failure is in $WORK/failures.txt"
  exit 1
fi
echo "test-repeat: 0 failures"
