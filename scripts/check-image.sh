#!/usr/bin/env bash
# Build the release binary, assemble the image's root filesystem, prove it is
# complete (the binary runs chrooted in it, with nothing from the host), pack
# it FROM scratch with buildah (no daemon: vfs storage, chroot isolation) and
# check the image: non-root user, ports 8080 and 9090, under 30 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

max_bytes=$((30 * 1024 * 1024))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --locked -p nexus-bin
scripts/image-rootfs.sh target/release/nexus "$work/rootfs"

if [[ $(id -u) -eq 0 ]]; then
  chroot "$work/rootfs" /usr/local/bin/nexus --version
  chroot "$work/rootfs" /usr/local/bin/nexus validate --config /etc/nexus/nexus.yaml
else
  echo "check-image: not root, skipping the chroot run" >&2
fi

cp deployments/image/Containerfile "$work/"
bah=(buildah --storage-driver vfs)
tag="localhost/nexus:check-$$"
"${bah[@]}" bud --quiet --isolation chroot -f "$work/Containerfile" -t "$tag" "$work" >/dev/null
"${bah[@]}" push --quiet "$tag" "oci-archive:$work/nexus.oci.tar" >/dev/null
user=$("${bah[@]}" inspect --format '{{.OCIv1.Config.User}}' "$tag")
ports=$("${bah[@]}" inspect --format '{{.OCIv1.Config.ExposedPorts}}' "$tag")
"${bah[@]}" rmi "$tag" >/dev/null
size=$(stat -c %s "$work/nexus.oci.tar")
unpacked=$(du -sb "$work/rootfs" | cut -f1)

echo "image: $((size / 1024)) KiB packed, $((unpacked / 1024)) KiB unpacked (limit $((max_bytes / 1024)) KiB), user $user, ports $ports"
[[ $user == 65532:65532 ]] || { echo "check-image: the image must run as 65532 (non-root)" >&2; exit 1; }
[[ $ports == *8080/tcp* && $ports == *9090/tcp* ]] || { echo "check-image: ports 8080 and 9090 must be exposed" >&2; exit 1; }
((size < max_bytes && unpacked < max_bytes)) || { echo "check-image: image is over 30 MB" >&2; exit 1; }
