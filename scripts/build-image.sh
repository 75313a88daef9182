#!/usr/bin/env bash
# Builds the OCI image from the Containerfile with podman, offline:
#
#   scripts/build-image.sh [--binary PATH] [--tag NAME:TAG]
#
# Without --binary it builds the release binary (cargo build --release --locked). The image is
# tagged rananeeti:VERSION (or --tag) and labelled with the version and commit that the binary's
# own `--version` prints. PODMAN may name podman with global flags (PODMAN="podman --root DIR
# --storage-driver vfs" keeps the image in DIR). Prints the tag on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
tag=""
while [ "$#" -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--tag NAME:TAG]" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  cargo build --release --locked -p rananeeti
  binary=target/release/rananeeti
fi

# "rananeeti 0.1.0 (commit 8c369a7fca49)"
version_line=$("$binary" --version)
version=$(echo "$version_line" | awk '{ print $2 }')
revision=$(echo "$version_line" | sed -n 's/.*(commit \([^)]*\)).*/\1/p')
[ -n "$version" ] && [ -n "$revision" ] || { echo "$0: cannot read the version from: $version_line" >&2; exit 1; }
# The source's URL without any credentials a remote URL may carry.
source_url=${RANANEETI_IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null | sed -E 's#//[^@/]*@#//#' || true)}
source_url=${source_url:-unknown}
tag=${tag:-rananeeti:$version}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
deploy/image/assemble-rootfs.sh "$binary" "$context"
cp Containerfile "$context/Containerfile"

read -r -a podman <<< "${PODMAN:-podman}"
"${podman[@]}" build --network=none --pull=never \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --build-arg "SOURCE=$source_url" --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --tag "$tag" --file "$context/Containerfile" "$context" >&2
echo "$tag"
