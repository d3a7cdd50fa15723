#!/usr/bin/env bash
# Runs the whole suite inside a network namespace that holds only loopback, so no test can send a
# packet off this machine, then runs the tests marked `unprivileged` again as a throwaway user.
# Everything it makes (CORRAL_HOME, pytest's temp folders, the throwaway user) goes at exit.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d /tmp/corral-test.XXXXXX)
chmod 0755 "$work"
user=""
cleanup() {
  if [ -n "$user" ] && id -u "$user" >/dev/null 2>&1; then
    userdel "$user" 2>/dev/null || echo "test-isolated: could not remove user $user" >&2
  fi
  # stages a SIGKILLed test supervisor left mounted (the next supervisor would detach them)
  if [ "$(id -u)" = 0 ]; then
    .venv/bin/python -c "from corral.sandbox import stage; stage.sweep()" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export CORRAL_HOME="${CORRAL_HOME:-$work/home}"
mkdir -p "$CORRAL_HOME"
chmod 0777 "$CORRAL_HOME"
pytest_args=("$@")

# pytest exit 5 means "no tests collected": a failure of the suite, not a pass (handled below).
inner=$(cat <<'INNER'
set -uo pipefail
ip link set lo up 2>/dev/null || true
# prove the namespace holds loopback only before any test runs
if ip -o link show | grep -v ': lo:' | grep -q .; then echo "test netns has links besides lo" >&2; exit 1; fi
if ip route show | grep -q .; then echo "test netns has routes" >&2; exit 1; fi
INNER
)

if [ "$(id -u)" = 0 ]; then
  unshare -n -- bash -c "$inner
    cd '$root'
    .venv/bin/python -m pytest -q --basetemp '$work/pytest-root' \"\$@\"; rc=\$?; [ \$rc = 5 ] && { echo 'pytest collected no tests' >&2; exit 1; }; exit \$rc" _ "${pytest_args[@]}"
  rc=$?
  [ $rc = 0 ] || exit $rc
  # The same suite's `unprivileged` tests again as an ordinary user, made for this run only (its
  # own name, so parallel runs do not share it) and removed at exit.
  user="corral-test-$$"
  useradd --system --no-create-home --shell /usr/sbin/nologin "$user" || exit 1
  uhome="$work/user"; mkdir -p "$uhome"; chown "$user" "$uhome"
  echo "== unprivileged tests as $user =="
  unshare -n -- bash -c "$inner
    cd '$root'
    runuser -u $user -- env HOME='$uhome' CORRAL_HOME='$uhome/corral' PYTHONDONTWRITEBYTECODE=1 \
      .venv/bin/python -m pytest -q -p no:cacheprovider --basetemp '$uhome/pytest' -m unprivileged \"\$@\"; rc=\$?
    [ \$rc = 5 ] && { echo 'no unprivileged tests collected' >&2; exit 1; }; exit \$rc" _ "${pytest_args[@]}"
  exit $?
else
  unshare -rn -- bash -c "$inner
    cd '$root'
    .venv/bin/python -m pytest -q --basetemp '$work/pytest' \"\$@\"; rc=\$?; [ \$rc = 5 ] && { echo 'pytest collected no tests' >&2; exit 1; }; exit \$rc" _ "${pytest_args[@]}"
fi
