#!/bin/sh
# Builds the label container plugin bundle: OUT/plugin.json and OUT/rootfs.
#
#   plugins/label/build-bundle.sh PLUGIN_BINARY OUT
#
# PLUGIN_BINARY is plugboard-plugin-label as `swift build` made it. The rootfs holds:
#   /plugin/plugboard-plugin-label   the plugin
#   the shared libraries it loads    (ldd): glibc, libstdc++, libgcc and libmsgpackc from
#                                    Debian's packages, the Swift runtime from the toolchain
#   /bin/busybox and a few applets   from Debian's busybox-static, for looking around
# Libraries are hard-linked when OUT is on the same file system, else copied. Nothing
# here is committed: run the script again after a rebuild.
set -eu

bin=${1:?usage: build-bundle.sh PLUGIN_BINARY OUT}
out=${2:?usage: build-bundle.sh PLUGIN_BINARY OUT}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$bin" ] || { echo "build-bundle.sh: $bin is not an executable" >&2; exit 1; }

place() { # place SOURCE DEST: hard link if possible, else copy (following symlinks)
    mkdir -p "$(dirname "$2")"
    rm -f "$2"
    ln "$(readlink -f "$1")" "$2" 2>/dev/null || cp -L "$1" "$2"
}

rm -rf "$out"
mkdir -p "$out/rootfs"
rootfs=$(cd "$out/rootfs" && pwd)
cp "$here/bundle/plugin.json" "$out/plugin.json"
for d in bin plugin proc sys dev tmp etc; do mkdir -p "$rootfs/$d"; done

place "$bin" "$rootfs/plugin/plugboard-plugin-label"
# Every library the dynamic loader resolves, at the same path inside the rootfs.
ldd "$bin" | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]*ld-linux/ { print $1 }' | sort -u | while read -r lib; do
    place "$lib" "$rootfs$lib"
done

busybox=$(dpkg -L busybox-static 2>/dev/null | grep '/busybox$' | head -n1 || true)
[ -n "$busybox" ] || { echo "build-bundle.sh: busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
place "$busybox" "$rootfs/bin/busybox"
for applet in sh ls cat env hostname; do ln -sf busybox "$rootfs/bin/$applet"; done

echo "root:x:0:0:root:/:/bin/sh" > "$rootfs/etc/passwd"
echo "root:x:0:" > "$rootfs/etc/group"
echo "build-bundle.sh: $out ($(du -sh "$out" | cut -f1), $(find "$rootfs" -type f | wc -l) files)"
