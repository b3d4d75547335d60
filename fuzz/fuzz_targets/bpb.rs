//! Boot sector and FSInfo: the input's first 512 bytes are sector 0, the next 512 an FSInfo
//! sector. Parsing must never panic, and what it accepts must hold together: the data area
//! inside the volume, a byte-exact write-back, a dirty bit that round-trips, sanitized FSInfo
//! hints inside the volume.
#![no_main]

use fatcache::fat::bpb::{BOOT_SECTOR_SIZE, Bpb, FatType, FsInfo};
use fatcache::fat::table::FAT_START_ENT;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (boot, rest) = data.split_at(data.len().min(BOOT_SECTOR_SIZE));
    let Ok(bpb) = Bpb::parse(boot) else {
        // Refused; FSInfo alone must still parse or refuse without a panic.
        let _ = FsInfo::parse(rest);
        return;
    };
    check_geometry(&bpb);
    check_round_trip(&bpb, boot);
    if let Ok(info) = FsInfo::parse(rest) {
        check_fsinfo(&bpb, info, rest);
    }
});

/// Every derived quantity is computable and the data area lies inside the volume.
fn check_geometry(bpb: &Bpb) {
    let total = u64::from(bpb.total_sectors());
    let clusters = bpb.data_clusters();
    assert!(clusters > 0, "accepted a volume without data clusters");
    assert_eq!(FatType::from_clusters(clusters), bpb.fat_type());
    assert_eq!(bpb.max_cluster(), clusters + FAT_START_ENT - 1);
    assert!(bpb.bytes_per_cluster() > 0);
    assert!(bpb.first_fat_sector() < total);
    assert!(bpb.first_data_sector() <= total);
    let last = bpb
        .cluster_to_sector(bpb.max_cluster())
        .expect("last cluster maps");
    assert!(
        last + u64::from(bpb.sectors_per_cluster) <= total,
        "last cluster past the end"
    );
    assert_eq!(bpb.cluster_to_sector(FAT_START_ENT - 1), None);
    assert_eq!(
        bpb.cluster_to_sector(bpb.max_cluster().saturating_add(1)),
        None
    );
    assert_eq!(bpb.cluster_to_sector(u32::MAX), None);
    match bpb.root_cluster() {
        Some(root) => {
            assert!((FAT_START_ENT..=bpb.max_cluster()).contains(&root));
            let info = bpb.fsinfo_sector().expect("FAT32 has FSInfo");
            assert!(info < u32::from(bpb.reserved_sectors));
        }
        None => {
            assert!(bpb.root_dir_sectors() > 0);
            assert!(bpb.first_root_dir_sector().is_some());
        }
    }
    if let Some(n) = bpb.active_fat() {
        assert!(n < bpb.num_fats);
        assert!(!bpb.fat_mirroring());
    }
}

/// Writing the fields back into the sector they came from changes nothing; the dirty bit
/// round-trips and touches only itself.
fn check_round_trip(bpb: &Bpb, boot: &[u8]) {
    let mut copy = boot.to_vec();
    bpb.serialize(&mut copy);
    assert_eq!(copy, boot, "serialize did not reproduce the sector");
    assert_eq!(Bpb::parse(&copy).as_ref().ok(), Some(bpb));
    for dirty in [true, false] {
        bpb.set_dirty(&mut copy, dirty);
        assert_eq!(bpb.dirty(&copy), dirty);
        assert_eq!(
            Bpb::parse(&copy).as_ref().ok(),
            Some(bpb),
            "dirty bit changed a field"
        );
    }
}

fn check_fsinfo(bpb: &Bpb, info: FsInfo, sector: &[u8]) {
    let mut copy = sector[..BOOT_SECTOR_SIZE].to_vec();
    info.serialize(&mut copy);
    assert_eq!(
        copy,
        &sector[..BOOT_SECTOR_SIZE],
        "FSInfo serialize changed the sector"
    );
    let clean = info.sanitize(bpb);
    if let Some(free) = clean.free_count {
        assert!(free <= bpb.data_clusters());
    }
    if let Some(next) = clean.next_free {
        assert!((FAT_START_ENT..=bpb.max_cluster()).contains(&next));
    }
}
