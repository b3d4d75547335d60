#!/bin/sh
# Seeds the fuzz corpora from real volumes: the shipped FAT12 and FAT16 images and a FAT32 one
# made with mkfs.fat (skipped if dosfstools is missing). Run from the top of the tree:
#   sh fuzz/make-seeds.sh && cargo +nightly fuzz run -s none bpb fuzz/corpus/bpb
# Inputs follow each target's layout (see the doc comment of fuzz/fuzz_targets/*.rs).
set -eu
out=fuzz/corpus
mkdir -p "$out/bpb" "$out/chain" "$out/dirent"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The little-endian number of $3 bytes at byte $2 of file $1.
field() {
    od -An -tu"$3" -j"$2" -N"$3" "$1" | tr -d ' '
}

# name, image, the chain target's type byte (0 FAT12, 4 FAT16, 7 FAT32), dirent flags (bit 0:
# FAT32 entries). FAT and root offsets come from the image's BPB.
seed() {
    name=$1 img=$2 kind=$3 fat32=$4
    rsv=$(field "$img" 14 2)
    nfats=$(field "$img" 16 1)
    spf=$(field "$img" 22 2)
    [ "$spf" -eq 0 ] && spf=$(field "$img" 36 4)
    # FAT12/16: the root region follows the FATs; FAT32: cluster 2 does, the mkfs root.
    fat=$((rsv * 512))
    root=$(((rsv + nfats * spf) * 512))
    dd if="$img" of="$out/bpb/$name" bs=512 count=2 2>/dev/null
    # Header: type, cluster count pick 0x0010, next-free hint 2; then eight operations.
    {
        printf "\\$(printf %o "$kind")\\020\\000\\002\\000\\000\\000"
        printf '\000\000\002\000\003\004\000\000\001\002\003\000\004\003\005\000'
        printf '\005\005\003\000\000\000\003\000\002\000\004\000\007\001\000\000'
        dd if="$img" bs=1 skip="$fat" count=4096 2>/dev/null
    } > "$out/chain/$name"
    for mode in 0 1 2 3; do
        {
            printf "\\$(printf %o $((mode * 2 + fat32)))\\014a longer nam"
            dd if="$img" bs=1 skip="$root" count=4096 2>/dev/null
        } > "$out/dirent/$name-$mode"
    done
}

seed fat12 fat-images/floppy-fat12.img 0 0
seed fat16 fat-images/small-fat16.img 4 0
if command -v mkfs.fat >/dev/null; then
    truncate -s 34M "$tmp/f32.img"
    mkfs.fat -F 32 -S 512 -s 1 -n FUZZ32 "$tmp/f32.img" >/dev/null
    seed fat32 "$tmp/f32.img" 7 1
fi
echo "seeds in $out: $(find "$out" -type f | wc -l) files"
