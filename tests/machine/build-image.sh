#!/bin/sh
# Builds the Debian bookworm image the end-to-end tests boot with systemd-nspawn.
#
#   tests/machine/build-image.sh DEST
#
# DEST is used only once DEST/.complete exists: the image is built in a
# temporary directory next to DEST, renamed into place, and only then marked
# complete, so an interrupted build is never booted. Run again to resume; a
# DEST without .complete is thrown away and rebuilt.
#
# The image is a minbase system prepared the way a fresh cloud image is: an
# empty /etc/machine-id (systemd makes one up at boot), apt sources pointing at
# the mirror this host uses, and no apt package lists, so whatever installs a
# package inside must run `apt-get update` first.
#
# The mirror comes from this host's apt sources, one-line or deb822, including
# the `mirror+file:` URIs of Debian's cloud images (the first URL of the file
# they name); set CAIRN_DEBIAN_MIRROR (and CAIRN_DEBIAN_SECURITY_MIRROR) to
# override. Needs root.
#
#   tests/machine/build-image.sh --print-mirrors
#
# only prints the two mirrors it would use, one a line (the second empty when
# there is no security mirror), reading the apt sources under CAIRN_HOST_ROOT
# (default /) instead of this host's: the tests feed it sample sources.
set -eu

SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,curl,ca-certificates,procps

die() {
    echo "build-image: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: $0 DEST | --print-mirrors"
ROOT=${CAIRN_HOST_ROOT:-}
ROOT=${ROOT%/}

# --- mirror, from the host's apt sources ----------------------------------
# The first URL of an apt mirror list (apt-transport-mirror's format: one URL
# a line, then optional tab-separated metadata; `#` starts a comment).
mirror_list_first() {
    [ -f "$ROOT$1" ] || { echo "build-image: the apt sources name the mirror list $1, which does not exist" >&2; return 0; }
    sed 's/#.*//' "$ROOT$1" | awk 'NF { print $1; exit }'
}

# Prints "URI SUITE" for every deb entry, from one-line and deb822 files;
# a `mirror+file:` URI is replaced by the first URL of the file it names.
host_sources() {
    {
        for f in "$ROOT/etc/apt/sources.list" "$ROOT"/etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            awk '$1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    print $i, $(i + 1)
                }' "$f"
        done
        for f in "$ROOT"/etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            # One stanza per blank-line separated paragraph.
            awk 'function flush(   u, s) {
                     if (deb && enabled)
                         for (u = 2; u <= nu; u++) for (s = 2; s <= ns; s++) print uris[u], suites[s]
                     deb = 0; enabled = 1; nu = 0; ns = 0
                 }
                 BEGIN { enabled = 1 }
                 /^[ \t]*$/ { flush(); next }
                 /^#/ { next }
                 tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
                 tolower($1) == "enabled:" { enabled = (tolower($2) != "no") }
                 tolower($1) == "uris:" { nu = NF; for (i = 2; i <= NF; i++) uris[i] = $i }
                 tolower($1) == "suites:" { ns = NF; for (i = 2; i <= NF; i++) suites[i] = $i }
                 END { flush() }' "$f"
        done
    } | while read -r uri suite; do
        case $uri in
        mirror+file:*)
            list=${uri#mirror+file:}
            uri=$(mirror_list_first "/${list#"${list%%[!/]*}"}")
            ;;
        esac
        if [ -n "$uri" ]; then printf '%s %s\n' "$uri" "$suite"; fi
    done
}

# Sets MIRROR and SECURITY (empty when there is none), without a trailing /.
find_mirrors() {
    SOURCES=$(host_sources)
    MIRROR=${CAIRN_DEBIAN_MIRROR:-$(printf '%s\n' "$SOURCES" | awk '$2 !~ /-security$/ && $1 ~ /^https?:/ { print $1; exit }')}
    SECURITY=${CAIRN_DEBIAN_SECURITY_MIRROR:-$(printf '%s\n' "$SOURCES" | awk '$2 ~ /-security$/ && $1 ~ /^https?:/ { print $1; exit }')}
    [ -n "$MIRROR" ] || die "found no Debian mirror in $ROOT/etc/apt/sources.list{,.d/}; help: set CAIRN_DEBIAN_MIRROR"
    MIRROR=${MIRROR%/}
    SECURITY=${SECURITY%/}
}

if [ "$1" = --print-mirrors ]; then
    find_mirrors
    printf '%s\n%s\n' "$MIRROR" "$SECURITY"
    exit 0
fi

DEST=${1%/}
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and systemd-nspawn need it)"
if [ -e "$DEST/.complete" ]; then
    echo "build-image: $DEST is already complete"
    exit 0
fi
find_mirrors
echo "build-image: mirror $MIRROR${SECURITY:+, security $SECURITY}"

# --- host tools -----------------------------------------------------------
missing=
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v systemd-nspawn >/dev/null 2>&1 || missing="$missing systemd-container"
if [ -n "$missing" ]; then
    echo "build-image: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # word splitting of the package list is wanted
    apt-get install -y --no-install-recommends $missing ||
        { apt-get update && apt-get install -y --no-install-recommends $missing; }
fi

# --- build ------------------------------------------------------------------
if [ -e "$DEST" ]; then
    echo "build-image: removing the incomplete $DEST"
    rm -rf --one-file-system "$DEST"
fi
parent=$(dirname "$DEST")
mkdir -p "$parent"
TMP=$(mktemp -d "$parent/.$(basename "$DEST").tmp.XXXXXX")
trap 'rm -rf --one-file-system "$TMP"' EXIT INT TERM HUP

start=$(date +%s)
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$TMP" "$MIRROR"

# A fresh cloud image: systemd makes up a machine id at first boot.
: >"$TMP/etc/machine-id"
if [ -f "$TMP/var/lib/dbus/machine-id" ] && [ ! -L "$TMP/var/lib/dbus/machine-id" ]; then
    rm -f "$TMP/var/lib/dbus/machine-id"
fi
# debootstrap copies this host's name; the container manager names the machine.
rm -f "$TMP/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$TMP/etc/hosts"

# The same archive the host uses, in deb822 form as bookworm writes it.
rm -f "$TMP/etc/apt/sources.list"
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$MIRROR" "$SUITE" "$SUITE"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$SECURITY" ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$SECURITY" "$SUITE"
        printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
} >"$TMP/etc/apt/sources.list.d/debian.sources"
[ -f "$TMP/usr/share/keyrings/debian-archive-keyring.gpg" ] ||
    die "the image has no debian-archive-keyring; apt-get update inside would fail"

# No package lists and no caches, as in a fresh cloud image. (debootstrap
# leaves the Release, InRelease and Packages files of the suite it used.)
find "$TMP/var/lib/apt/lists" -mindepth 1 -maxdepth 1 ! -name partial ! -name lock \
    -printf 'build-image: removing /var/lib/apt/lists/%f\n' -exec rm -rf {} +
rm -f "$TMP"/var/cache/apt/*.bin "$TMP"/var/cache/apt/archives/*.deb
rm -rf "$TMP/debootstrap"

# Nothing on the console to log in with; the tests enter with nsenter.
ln -sf /dev/null "$TMP/etc/systemd/system/console-getty.service"

chmod 0755 "$TMP"
mv -T "$TMP" "$DEST"
trap - EXIT INT TERM HUP
touch "$DEST/.complete"
echo "build-image: $DEST complete in $(($(date +%s) - start)) s ($(du -sh "$DEST" | cut -f1))"
