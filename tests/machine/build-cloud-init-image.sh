#!/bin/sh
# Builds the image with real cloud-init that the cloud-init end-to-end tests
# boot, from the base image that build-image.sh made.
#
#   tests/machine/build-cloud-init-image.sh BASE DEST
#
# A separate image, not the base one with cloud-init added: cloud-init's four
# boot stages (each a Python start) would make every other test's machine
# boot seconds slower. DEST is the base copied, then cloud-init installed from
# Debian's archive, its data sources limited to NoCloud (the seed the harness
# writes into /var/lib/cloud/seed/nocloud/) and None, and the package lists
# removed again, so it stays like a fresh cloud image (empty machine-id, no
# apt lists). As build-image.sh does, it builds in a temporary directory next
# to DEST and marks DEST/.complete last; DEST/.base records which build of
# BASE it came from, so a rebuilt base image makes it rebuild. Needs root.
set -eu

die() {
    echo "build-cloud-init-image: $*" >&2
    exit 1
}

[ $# -eq 2 ] || die "usage: $0 BASE DEST"
BASE=${1%/}
DEST=${2%/}
[ "$(id -u)" -eq 0 ] || die "must run as root (chroot and apt-get inside the image need it)"
[ -e "$BASE/.complete" ] || die "$BASE is not a complete image; help: run tests/machine/build-image.sh $BASE first"

# Which build of the base: its .complete marker's change time and inode.
base_id=$(stat -c '%i %Z' "$BASE/.complete")
if [ -e "$DEST/.complete" ] && [ "$(cat "$DEST/.base" 2>/dev/null)" = "$base_id" ]; then
    echo "build-cloud-init-image: $DEST is already complete"
    exit 0
fi
if [ -e "$DEST" ]; then
    echo "build-cloud-init-image: removing the incomplete or outdated $DEST"
    rm -rf --one-file-system "$DEST"
fi

parent=$(dirname "$DEST")
mkdir -p "$parent"
TMP=$(mktemp -d "$parent/.$(basename "$DEST").tmp.XXXXXX")
trap 'rm -rf --one-file-system "$TMP"' EXIT INT TERM HUP

start=$(date +%s)
cp -a --reflink=auto "$BASE/." "$TMP/"
rm -f "$TMP/.complete"

# Inside a mount namespace of its own, so /proc mounted for apt is never left
# mounted on the host; no service is started in the chroot.
printf '#!/bin/sh\nexit 101\n' >"$TMP/usr/sbin/policy-rc.d"
chmod 0755 "$TMP/usr/sbin/policy-rc.d"
# shellcheck disable=SC2016 # $1 is the inner shell's
unshare --mount --propagation private -- /bin/sh -c '
    mount -t proc proc "$1/proc" &&
    chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
        /bin/sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends cloud-init"
' sh "$TMP"
rm -f "$TMP/usr/sbin/policy-rc.d"

# NoCloud reads the seed in /var/lib/cloud/seed/nocloud/; without the locale
# line cloud-init's locale module fails on a minbase image (no locales package).
cat >"$TMP/etc/cloud/cloud.cfg.d/90-cairn-test.cfg" <<'EOF'
# The end-to-end machines: a NoCloud seed written by the test harness.
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
EOF

# As fresh as the base: no package lists, caches, machine id or cloud-init state.
find "$TMP/var/lib/apt/lists" -mindepth 1 -maxdepth 1 ! -name partial ! -name lock -exec rm -rf {} +
rm -f "$TMP"/var/cache/apt/*.bin "$TMP"/var/cache/apt/archives/*.deb
rm -rf "$TMP/var/lib/cloud" "$TMP/var/log/cloud-init.log" "$TMP/var/log/cloud-init-output.log"
: >"$TMP/etc/machine-id"

chmod 0755 "$TMP"
mv -T "$TMP" "$DEST"
trap - EXIT INT TERM HUP
printf '%s\n' "$base_id" >"$DEST/.base"
touch "$DEST/.complete"
echo "build-cloud-init-image: $DEST complete in $(($(date +%s) - start)) s ($(du -sh "$DEST" | cut -f1))"
