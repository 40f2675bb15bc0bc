#!/usr/bin/env bash
# Assemble the container's root filesystem for a FROM-scratch image: the nexus
# binary, exactly the shared libraries it links (glibc >= 2.34 carries its own
# DNS/files NSS modules, so upstream host names resolve), a non-root user
# (65532, as distroless "nonroot"), and the default config at /etc/nexus/nexus.yaml.
#
#   scripts/image-rootfs.sh target/release/nexus /tmp/rootfs
#
# Used by the Dockerfile's build stage and by scripts/check-image.sh (buildah).
set -euo pipefail

bin=${1:?usage: image-rootfs.sh BINARY OUT_DIR}
out=${2:?usage: image-rootfs.sh BINARY OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/nexus"
install -m 0755 "$bin" "$out/usr/local/bin/nexus"

# Shared libraries (and the dynamic loader), at the paths the binary expects.
ldd "$bin" | awk '/=> \//{print $3} /^\s*\/.*ld-linux/{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
# The loader is also looked up at its canonical path.
if [[ -e /lib64/ld-linux-x86-64.so.2 && ! -e "$out/lib64/ld-linux-x86-64.so.2" ]]; then
  mkdir -p "$out/lib64"
  cp -L /lib64/ld-linux-x86-64.so.2 "$out/lib64/"
fi

printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
printf 'hosts: files dns\n' >"$out/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$out/etc/hosts"
install -m 0644 "$here/configs/nexus.yaml" "$out/etc/nexus/nexus.yaml"
