#!/usr/bin/env bash
# Assembles the build context of the Containerfile: CONTEXT/rootfs/ (the image's whole root
# filesystem) and CONTEXT/data/ (the empty data directory, chowned by the build).
#
#   deploy/image/assemble-rootfs.sh BINARY CONTEXT
#
# rootfs/ holds: the binary (debug info stripped), every shared library `ldd` names at the path
# the loader looks for it, CA certificates, /etc/passwd and /etc/group with the user rananeeti
# (10001), /tmp, and the copyright notices of the Debian packages the libraries and certificates
# come from (their licences ask for them).
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 BINARY CONTEXT" >&2
  exit 2
fi
binary=$1
context=$2
[ -x "$binary" ] || { echo "$0: $binary is not an executable" >&2; exit 1; }

rootfs=$context/rootfs
rm -rf "$rootfs" "$context/data"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/var/lib" \
  "$rootfs/usr/share/doc/rananeeti" "$context/data"
chmod 1777 "$rootfs/tmp"

install -m 0755 "$binary" "$rootfs/usr/local/bin/rananeeti"
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug "$rootfs/usr/local/bin/rananeeti"
fi

# Shared libraries: `ldd` prints `name => /path (addr)` and, for the loader, `/path (addr)`.
libraries=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ -n "$libraries" ] || { echo "$0: ldd names no library for $binary" >&2; exit 1; }
packages=()
for library in $libraries; do
  cp -L --parents "$library" "$rootfs/"
  if command -v dpkg >/dev/null 2>&1; then
    package=$(dpkg -S "$library" 2>/dev/null || dpkg -S "$(readlink -f "$library")" 2>/dev/null || true)
    package=${package%%:*}
    [ -n "$package" ] && packages+=("$package")
  fi
done

certificates=/etc/ssl/certs/ca-certificates.crt
[ -f "$certificates" ] || { echo "$0: $certificates is missing (apt-get install ca-certificates)" >&2; exit 1; }
cp "$certificates" "$rootfs/etc/ssl/certs/ca-certificates.crt"
packages+=(ca-certificates)

for package in $(printf '%s\n' "${packages[@]}" | sort -u); do
  if [ -f "/usr/share/doc/$package/copyright" ]; then
    mkdir -p "$rootfs/usr/share/doc/$package"
    cp "/usr/share/doc/$package/copyright" "$rootfs/usr/share/doc/$package/copyright"
  fi
done
cat > "$rootfs/usr/share/doc/rananeeti/README" <<'NOTE'
rananeeti: licensed under the Apache License 2.0. The shared libraries and CA certificates beside
it come from Debian packages; their copyright notices are in /usr/share/doc/<package>/copyright.
NOTE

cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
rananeeti:x:10001:10001:rananeeti:/var/lib/rananeeti:/sbin/nologin
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
rananeeti:x:10001:
GROUP
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
