#!/bin/sh
# race-loop.sh MOUNTPOINT SECONDS
#
# The January 2021 write_cache_pages race with ordinary tools, no fatcache code involved:
# one 3000-byte file F (page 0 only), six loops of one-byte dd writes at random offsets
# inside it, and one loop that grows F to 4000 bytes, shrinks it back and fsyncs it.
#
# Meant for a fatcache mount with `sync` (every write and every growing truncate writes page 0
# back and waits for it inside the daemon, like a kernel vfat mount with -o sync) and a
# wake_delay_us= stall between clearing PG_writeback and the wake. In the eras with the bug
# (era=v5.9, era=v5.10) a waiter in write_cache_pages is released by the stale wake of an older
# writeback and hits the BUG_ON; with on_bug=warn the mount counts the hits and carries on.
#
# POSIX sh (dash is fine): no $RANDOM, so offsets come from od(1) on /dev/urandom. The file
# stays on the mount afterwards. The first failing command stops every loop (a daemon that
# died under on_bug=abort fails them all) and the script exits 1.

set -u

if [ "$#" -ne 2 ]; then
    echo "usage: $0 MOUNTPOINT SECONDS" >&2
    exit 2
fi
dir=$1
seconds=$2
case $seconds in
    '' | *[!0-9]*) echo "$0: SECONDS must be a whole number" >&2; exit 2 ;;
esac

# Refuse a directory that is not a mount point: the file would land on the disk under it.
if command -v mountpoint >/dev/null && ! mountpoint -q "$dir"; then
    echo "$0: $dir is not a mount point" >&2
    exit 2
fi

F=$dir/race.dat
SIZE=3000

# The loops stop when $stop appears; $failed says one of them met an error. Both live
# outside the mount.
stop=$(mktemp -u "${TMPDIR:-/tmp}/race-loop.XXXXXX")
failed=$stop.failed
# Background loops of a script ignore SIGINT, so Ctrl-C reaches only this shell: stop them.
trap 'touch "$stop"; wait; rm -f "$stop" "$failed"; exit 130' INT TERM

# A fresh 3000-byte file: smaller than one 4 KiB page, so every write lands in page 0.
dd if=/dev/urandom of="$F" bs="$SIZE" count=1 status=none || exit 1

# Ends every loop after a failure.
give_up() {
    touch "$failed" "$stop"
}

# Writer: one random byte at a random offset below SIZE, in place (conv=notrunc keeps the
# size, so the kernel's FUSE module lets these writes run in parallel with each other).
writer() {
    while [ ! -e "$stop" ]; do
        off=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
        dd if=/dev/urandom of="$F" bs=1 count=1 seek=$((off % SIZE)) conv=notrunc \
            status=none || give_up
    done
}

# Resizer: an extending truncate (fat_cont_expand: zero-fill the tail of page 0, then on a
# sync mount a WB_SYNC_ALL writeback of it), a shrinking one, and an fsync (sync FILE calls
# fsync(2) on it since coreutils 8.24).
resizer() {
    while [ ! -e "$stop" ]; do
        { truncate -s 4000 "$F" && truncate -s "$SIZE" "$F" && sync "$F"; } || give_up
    done
}

for _ in 1 2 3 4 5 6; do
    writer &
done
resizer &

# Sleep in one-second steps so that a failure ends the run early.
left=$seconds
while [ "$left" -gt 0 ] && [ ! -e "$stop" ]; do
    sleep 1
    left=$((left - 1))
done
touch "$stop"
wait
rm -f "$stop"
if [ -e "$failed" ]; then
    rm -f "$failed"
    echo "$0: a command failed on $dir; stopped early" >&2
    exit 1
fi
