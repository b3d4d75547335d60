#!/usr/bin/env bash
# make-images.sh: the FAT test images of fatcache, made without root and without loop mounts:
# mkfs.fat (dosfstools) formats a file, mtools fills it.
#
# Usage:
#   make-images.sh [build]       remake the shipped images in this directory, then MANIFEST.md
#   make-images.sh manifest      rewrite MANIFEST.md from the shipped images (warns if a fresh
#                                build differs from them)
#   make-images.sh check         build into a temp dir and fail unless the result is byte for
#                                byte the shipped images (same dosfstools and mtools versions)
#   make-images.sh fat32 OUTDIR  make fat32-64m.img in OUTDIR; run by tests/fat_images.rs at
#                                test time, never committed (FAT32 needs >= 65525 clusters)
#
# Reproducible by construction: fixed volume ids (-i) and labels (-n), mkfs.fat --invariant
# for the label entry's time, every source file touched to one instant and copied with
# `mcopy -m`, SOURCE_DATE_EPOCH for the directories mmd makes, TZ=UTC, a fixed file order,
# and contents from fixed generators (never /dev/urandom).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C.UTF-8 TZ=UTC MTOOLS_SKIP_CHECK=1
# 2021-01-04 12:00:00 UTC: file times below, and what mtools stamps on directories.
export SOURCE_DATE_EPOCH=1609761600
readonly STAMP='2021-01-04 12:00:00'

readonly FLOPPY=floppy-fat12.img
readonly FAT16=small-fat16.img
readonly FAT32=fat32-64m.img
readonly SHIPPED=("$FLOPPY" "$FAT16")
# The emoji name is left out of the FAT32 tree: what mtools stores for a character outside
# the BMP depends on its version (4.0.32 keeps the low 16 bits), and the FAT32 image is made
# by whatever mtools the test machine has.
readonly EMOJI_NAME=$'smile-\U0001F600.txt'
readonly DELETED_NAMES=('/DELETED.TXT' '/deleted file with a long name.txt' '/frag/B.BIN')

die() {
    printf 'make-images.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '4,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# $@: tools needed beyond dosfstools and mtools.
need_tools() {
    local t
    for t in mkfs.fat fsck.fat mcopy mmd mdel mdir mtype mshowfat "$@"; do
        command -v "$t" >/dev/null || die "$t not found (install dosfstools, mtools, python3)"
    done
    # mtools turns UTF-8 arguments into long names only under a UTF-8 locale.
    [[ $(locale charmap 2>/dev/null) == UTF-8 ]] || die "locale C.UTF-8 is not available"
}

# mkfs.fat's --invariant (dosfstools 4.2) fixes the label entry's time; -i, given after it,
# still sets the volume id.
invariant_flag() {
    local help
    help=$(mkfs.fat --help 2>&1 || true)
    if [[ $help == *--invariant* ]]; then
        printf '%s' --invariant
    fi
}

# ---- command log: the manifest shows the commands exactly as run ----

LOG=/dev/null

quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# Runs a command after appending it to $LOG; long argument lists are shortened there.
run() {
    local line='' a i=0 n=$#
    for a in "$@"; do
        i=$((i + 1))
        if ((n > 14 && i > 8 && i < n - 1)); then
            ((i == 9)) && line+=" ... ($((n - 10)) more)"
            continue
        fi
        line+=" $(quote "$a")"
    done
    printf '%s\n' "${line# }" >>"$LOG"
    "$@"
}

note() {
    printf '# %s\n' "$*" >>"$LOG"
}

# ---- deterministic contents ----

# $2 bytes cycling 0..250: 251 is prime, so no two 512-byte clusters of a file are equal.
pattern() {
    local out=$1 n=$2 i oct block=$1.block
    for ((i = 0; i < 251; i++)); do
        printf -v oct '%03o' "$i"
        printf "\\$oct"
    done >"$block"
    : >"$out.tmp"
    for ((i = 0; i * 251 < n; i++)); do
        cat "$block" >>"$out.tmp"
    done
    head -c "$n" "$out.tmp" >"$out"
    rm -f "$block" "$out.tmp"
}

# $3 numbered text lines naming file $1, so a cluster out of place shows in the text.
lines() {
    seq -f "line %06.0f of $2" 1 "$3" >"$1"
}

text() {
    printf '%s\n' "$2" >"$1"
}

# Makes every source file and directory under the current directory carry $STAMP.
stamp_all() {
    find . -exec touch -h -d "$STAMP" {} +
}

fsck_clean() {
    local out
    out=$(fsck.fat -n "$1" 2>&1) || die "fsck.fat -n $1 failed: $out"
    # Clean means only the version line and the summary line.
    [[ $(printf '%s\n' "$out" | wc -l) -eq 2 ]] || die "fsck.fat -n $1 reported: $out"
}

# ---- the images ----

# 1.44 MB floppy, 8.3 names only: README.TXT, a 20 KiB pattern, an empty file, a file whose
# size is not a multiple of the 512-byte cluster, an empty directory, and DIR1/DIR2/DIR3.
make_floppy() {
    local src=$1 img=$FLOPPY
    mkdir -p "$src/DIR1/DIR2/DIR3" && cd "$src"
    text README.TXT 'fatcache test image floppy-fat12.img: FAT12, 8.3 names only.'
    pattern DATA.BIN 20480
    : >EMPTY.TXT
    # 5000 bytes: nine full clusters and 392 bytes of a tenth.
    lines ODD.TXT.full ODD.TXT 400
    head -c 5000 ODD.TXT.full >ODD.TXT && rm ODD.TXT.full
    text DIR1/ONE.TXT 'level one'
    text DIR1/DIR2/TWO.TXT 'level two'
    lines DIR1/DIR2/DIR3/THREE.TXT THREE.TXT 40
    stamp_all

    run mkfs.fat $(invariant_flag) -C -F 12 -i 1a2b3c12 -n FATCACHE12 "$img" 1440 >/dev/null
    run mcopy -m -i "$img" README.TXT DATA.BIN EMPTY.TXT ODD.TXT ::/
    run mmd -i "$img" ::/EMPTYDIR ::/DIR1 ::/DIR1/DIR2 ::/DIR1/DIR2/DIR3
    run mcopy -m -i "$img" DIR1/ONE.TXT ::/DIR1/
    run mcopy -m -i "$img" DIR1/DIR2/TWO.TXT ::/DIR1/DIR2/
    run mcopy -m -i "$img" DIR1/DIR2/DIR3/THREE.TXT ::/DIR1/DIR2/DIR3/
    fsck_clean "$img"
}

# The VFAT tree of small-fat16.img and fat32-64m.img. $1: source dir, $2: image, $3: "emoji"
# to include the emoji name.
fill_vfat_tree() {
    local src=$1 img=$2 emoji=$3 i
    local long40='This is a long file name with more than forty characters.txt'
    local long255='A name of exactly 255 characters, the VFAT limit, '
    while ((${#long255} < 251)); do long255+='0123456789'; done
    long255="${long255:0:251}.txt"
    local deep='Long Directory Name For Nested Tests'
    local uni=('Crème brûlée.txt' 'Ελληνικά.txt' '中文文件名.txt')
    [[ $emoji == emoji ]] && uni+=("$EMOJI_NAME")
    local many=()
    for i in $(seq -w 1 300); do many+=("many/file-$i.txt"); done

    mkdir -p "$src/many" "$src/frag" "$src/$deep/level 2/level three" && cd "$src"
    text README.TXT "fatcache test image, FAT16 or FAT32: VFAT long names, unicode, case, deletions."
    text lower.txt 'lower-case 8.3 name: NT case bits 0x18 (base and extension)'
    text lowbase.TXT 'lower-case base only: NT case bit 0x08'
    text UPEXT.txt 'lower-case extension only: NT case bit 0x10'
    text makefile 'lower-case name without extension: NT case bit 0x08'
    text 'CAFÉ.TXT' 'upper-case 8.3 name with a non-ASCII byte (0x90 in codepages 437 and 850)'
    text MixedCase.txt 'mixed case needs a long name; the first of two names differing in case'
    text mixedcase.TXT 'the second name differing only in case: FAT keeps one, so never copied'
    for i in "${uni[@]}"; do text "$i" "unicode long name: $i"; done
    text 'name with spaces.tar.gz' 'spaces and several dots'
    text 'a.b.c.d.txt' 'several dots'
    text "$long40" 'long name over forty characters'
    text "$long255" 'long name of 255 UTF-16 units, 20 LFN slots'
    text "$deep/top.txt" 'level one of the nested tree'
    text "$deep/level 2/second.txt" 'level two of the nested tree'
    lines "$deep/level 2/level three/deep file.txt" 'deep file.txt' 100
    for i in "${many[@]}"; do text "$i" "small file $i"; done
    lines many-clusters.txt many-clusters.txt 10000
    pattern frag/A.BIN 1000
    pattern frag/B.BIN 1000
    pattern frag/C.BIN 1000
    pattern frag/fragmented.bin 5000
    text DELETED.TXT 'deleted after copying: its entry stays, marked 0xE5'
    text 'deleted file with a long name.txt' 'deleted after copying, with its LFN slots'
    stamp_all

    run mcopy -m -i "$img" README.TXT lower.txt lowbase.TXT UPEXT.txt makefile 'CAFÉ.TXT' ::/
    run mcopy -m -i "$img" MixedCase.txt ::/
    note 'FAT names are case-insensitive: -D s makes mcopy skip the clash (and exit 1)'
    run mcopy -D s -m -i "$img" mixedcase.TXT ::/ || true
    [[ $(mtype -i "$img" ::/mixedcase.txt) == "$(cat MixedCase.txt)" ]] \
        || die "$img: mcopy replaced MixedCase.txt with a name differing only in case"
    run mcopy -m -i "$img" "${uni[@]}" ::/
    run mcopy -m -i "$img" 'name with spaces.tar.gz' 'a.b.c.d.txt' "$long40" "$long255" ::/
    run mmd -i "$img" "::/$deep" "::/$deep/level 2" "::/$deep/level 2/level three"
    run mcopy -m -i "$img" "$deep/top.txt" "::/$deep/"
    run mcopy -m -i "$img" "$deep/level 2/second.txt" "::/$deep/level 2/"
    run mcopy -m -i "$img" "$deep/level 2/level three/deep file.txt" "::/$deep/level 2/level three/"
    run mmd -i "$img" ::/many
    run mcopy -m -i "$img" "${many[@]}" ::/many/
    run mcopy -m -i "$img" many-clusters.txt ::/
    note 'FAT12/16: mtools allocates first fit, so fragmented.bin starts in the hole B.BIN leaves'
    note 'FAT32: mtools follows the FSInfo next-free hint instead, and the file stays in one piece'
    run mmd -i "$img" ::/frag
    run mcopy -m -i "$img" frag/A.BIN frag/B.BIN frag/C.BIN ::/frag/
    run mdel -i "$img" ::/frag/B.BIN
    run mcopy -m -i "$img" frag/fragmented.bin ::/frag/
    run mcopy -m -i "$img" DELETED.TXT 'deleted file with a long name.txt' ::/
    run mdel -i "$img" ::/DELETED.TXT '::/deleted file with a long name.txt'
    fsck_clean "$img"
}

make_fat16() {
    local src=$1
    mkdir -p "$src" && cd "$src"
    # 4 MiB at one sector per cluster is 8095 clusters: FAT16 by count, as fatgen103 decides.
    run mkfs.fat $(invariant_flag) -C -F 16 -s 1 -i 1a2b3c16 -n FATCACHE16 "$FAT16" 4096 >/dev/null
    fill_vfat_tree "$src" "$FAT16" emoji
}

make_fat32() {
    local src=$1
    mkdir -p "$src" && cd "$src"
    # 64 MiB at one sector per cluster: about 129 000 clusters, FAT32 by count.
    run mkfs.fat $(invariant_flag) -C -F 32 -s 1 -i 1a2b3c32 -n FATCACHE32 "$FAT32" 65536 >/dev/null
    fill_vfat_tree "$src" "$FAT32" no-emoji
}

# Builds all three images into $1/out, with command logs in $1/<image>.log.
make_all() {
    local work=$1
    mkdir -p "$work/out"
    [[ -n $(invariant_flag) ]] || die "mkfs.fat lacks --invariant (needs dosfstools >= 4.2)"
    LOG="$work/$FLOPPY.log" make_floppy "$work/src-fat12"
    LOG="$work/$FAT16.log" make_fat16 "$work/src-fat16"
    LOG="$work/$FAT32.log" make_fat32 "$work/src-fat32"
    mv "$work/src-fat12/$FLOPPY" "$work/src-fat16/$FAT16" "$work/src-fat32/$FAT32" "$work/out/"
}

# ---- the manifest ----

# $1: image; $2: "bpb" for boot-sector facts (and the image's sha256 if $3 is "yes"), or
# "tree" for the table of files. The table lists with mdir and reads with mtype, so its names
# are what mtools reads back, not what was given to it.
py_describe() {
    python3 - "$@" <<'EOF'
import hashlib, os, struct, subprocess, sys

def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h

img, mode = sys.argv[1], sys.argv[2]
raw = open(img, 'rb').read()
if mode == 'bpb':
    bps, spc, res, nfats, root, tot16, _, fat16 = struct.unpack_from('<HBHBHHBH', raw, 11)
    tot32, fat32 = struct.unpack_from('<II', raw, 32)
    fatsz = fat16 or fat32
    ebr = 36 if fat16 else 64
    vol_id = struct.unpack_from('<I', raw, ebr + 3)[0]
    label = raw[ebr + 7:ebr + 18].decode('ascii').rstrip(' ')
    clusters = ((tot16 or tot32) - res - nfats * fatsz - (root * 32 + bps - 1) // bps) // spc
    kind = 'FAT12' if clusters <= 4084 else 'FAT16' if clusters <= 65524 else 'FAT32'
    print(f'- image bytes: {len(raw)}')
    if sys.argv[3] == 'yes':
        print(f'- image sha256: `{hashlib.sha256(raw).hexdigest()}`')
    print(f'- FAT type: {kind}')
    print(f'- bytes per cluster: {bps * spc}')
    print(f'- data clusters: {clusters}')
    print(f'- volume label: `{label}`')
    print(f'- volume id: `0x{vol_id:08x}`')
    sys.exit(0)

env = dict(os.environ, MTOOLS_SKIP_CHECK='1')
listing = subprocess.run(['mdir', '-/', '-b', '-i', img, '::/'], env=env, check=True,
                         capture_output=True).stdout.decode('utf-8')
rows = []
for line in listing.splitlines():
    assert line.startswith('::/'), line
    path = line[2:]
    assert '`' not in path and '|' not in path, path
    if path.endswith('/'):
        rows.append((path[:-1], '| `%s` | dir | | | |' % path[:-1]))
        continue
    data = subprocess.run(['mtype', '-i', img, '::' + path], env=env, check=True,
                          capture_output=True).stdout
    rows.append((path, '| `%s` | file | %d | `%016x` | `%s` |'
                 % (path, len(data), fnv1a64(data), hashlib.sha256(data).hexdigest())))
print('| path | kind | bytes | fnv1a64 | sha256 |')
print('|---|---|---:|---|---|')
for _, row in sorted(rows, key=lambda r: r[0].encode('utf-8')):
    print(row)
EOF
}

# The shipped emoji name after "smile-", non-ASCII characters written as \u{...}.
emoji_readback() {
    mdir -/ -b -i "$here/$FAT16" ::/ | sed -n 's|^::/smile-||p' | python3 -c '
import sys
name = sys.stdin.read().rstrip("\n")
print("".join(c if ord(c) < 128 else "\\u{%X}" % ord(c) for c in name), end="")'
}

# $1: a scratch directory.
tool_versions() {
    local mk mt
    # mkfs.fat prints its version only when it formats.
    mk=$(mkfs.fat -C "$1/version.img" 1440 2>&1 || true)
    mt=$(mtools --version 2>&1 || true)
    printf '%s; %s' "${mk%%$'\n'*}" "${mt%%$'\n'*}"
}

# Writes one image's section. $1: image path, $2: command log, $3: shipped yes/no,
# $4: "tree" to list the tree, else the name of the image whose tree it repeats.
manifest_section() {
    local img=$1 log=$2 shipped=$3 tree=$4 name d deleted=''
    name=$(basename "$img")
    printf '## Image `%s`\n\n' "$name"
    printf -- '- shipped: %s\n' "$shipped"
    py_describe "$img" bpb "$shipped"
    for d in "${DELETED_NAMES[@]}"; do deleted+="${deleted:+, }\`$d\`"; done
    [[ $name == "$FLOPPY" ]] && deleted=none
    printf -- '- deleted entries: %s\n' "$deleted"
    if [[ $name != "$FLOPPY" ]]; then
        local frag many
        frag=$(mshowfat -i "$img" ::/frag/fragmented.bin)
        many=$(mshowfat -i "$img" ::/many)
        printf -- '- clusters (mshowfat): `/frag/fragmented.bin` %s; `/many` %s\n' \
            "${frag#* }" "${many#* }"
    fi
    if [[ $tree == tree ]]; then
        printf -- '- tree: listed below\n'
    else
        # The emoji file as the listed image's table names it (what its mtools read back).
        local emoji
        emoji=$(mdir -/ -b -i "$here/$tree" ::/ | sed -n 's|^::\(/smile-.*\)$|\1|p')
        [[ -n $emoji ]] || die "no emoji file in $tree"
        printf -- '- tree: same as `%s`\n' "$tree"
        printf -- '- not in this image: `%s`\n' "$emoji"
    fi
    printf '\nMade with (in a directory holding the generated sources):\n\n```sh\n'
    cat "$log"
    printf '```\n\n'
    if [[ $tree == tree ]]; then
        py_describe "$img" tree
        printf '\n'
    fi
}

write_manifest() {
    local work=$1 out=$here/MANIFEST.md.tmp
    {
        cat <<EOF
# Manifest of the FAT test images

Generated by \`make-images.sh\` (\`make-images.sh manifest\` rewrites it); do not edit by hand.
\`tests/fat_images.rs\` reads this file: keep the \`- key: value\` lines and the table layout.

- made with: $(tool_versions "$work")
- file times: $STAMP UTC (mcopy -m from sources touched to it); directories
  made by mmd carry the same instant (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH), the volume
  label entry the fixed time of mkfs.fat --invariant.
- contents: from the generators in make-images.sh (fixed text, \`seq\` lines, and a byte
  pattern cycling 0..250), never random.
- checksums: \`fnv1a64\` is 64-bit FNV-1a over the file's bytes (offset basis
  0xcbf29ce484222325, prime 0x100000001b3), 16 lower-case hex digits; the test checks it and
  the size. \`sha256\` is what sha256sum prints, for people.
- paths: as mtools reads them back (mdir -/ -b), in UTF-8, sorted by bytes.
  Directories have kind \`dir\` and no size.
- deleted entries: names removed with mdel after copying; their directory entries remain,
  marked 0xE5, and mtools no longer finds them.

Notes on what mtools stored:

- \`CAFÉ.TXT\` is a plain 8.3 entry, no long name: byte 0x90 (É in codepages 437 and 850).
- \`lower.txt\`, \`lowbase.TXT\`, \`UPEXT.txt\` and \`makefile\` are 8.3 entries with NT case
  bits (0x18, 0x08, 0x10, 0x08), no long name. \`MixedCase.txt\` needs a long name.
- \`mixedcase.TXT\` was also given to mcopy and skipped: FAT compares names without case.
- The emoji name was given to mcopy as \`smile-\\u{1F600}.txt\` and reads back as
  \`smile-$(emoji_readback)\`; that is the path below. The surrogate pair would be D83D DE00;
  mtools 4.0.32 instead keeps the low 16 bits of the character, U+F600 (private use).
- Short aliases of long names use codepage 437 (\`MTOOLSRC\` sets default_codepage=437, the
  Linux default); mtools would use 850 otherwise.

EOF
        manifest_section "$here/$FLOPPY" "$work/$FLOPPY.log" yes tree
        manifest_section "$here/$FAT16" "$work/$FAT16.log" yes tree
        manifest_section "$work/out/$FAT32" "$work/$FAT32.log" 'no (made at test time)' "$FAT16"
    } >"$out"
    mv "$out" "$here/MANIFEST.md"
}

# Compares a fresh build with the shipped images; returns 1 if any differs.
compare_shipped() {
    local work=$1 img rc=0
    for img in "${SHIPPED[@]}"; do
        if ! cmp -s "$work/out/$img" "$here/$img"; then
            printf 'make-images.sh: a fresh %s differs from the shipped one\n' "$img" >&2
            rc=1
        fi
    done
    return "$rc"
}

main() {
    local mode=${1:-build} work
    if [[ $mode == fat32 ]]; then need_tools; else need_tools python3; fi
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
    printf 'default_codepage=437\n' >"$work/mtoolsrc"
    export MTOOLSRC=$work/mtoolsrc
    case $mode in
    build)
        (($# <= 1)) || usage
        make_all "$work"
        for img in "${SHIPPED[@]}"; do cp "$work/out/$img" "$here/$img"; done
        write_manifest "$work"
        ;;
    manifest)
        (($# == 1)) || usage
        make_all "$work"
        compare_shipped "$work" || true
        write_manifest "$work"
        ;;
    check)
        (($# == 1)) || usage
        make_all "$work"
        compare_shipped "$work"
        ;;
    fat32)
        (($# == 2)) || usage
        mkdir -p "$2"
        local out
        out=$(cd "$2" && pwd)
        LOG=/dev/null make_fat32 "$work/src-fat32"
        mv "$work/src-fat32/$FAT32" "$out/$FAT32"
        ;;
    *) usage ;;
    esac
}

main "$@"
