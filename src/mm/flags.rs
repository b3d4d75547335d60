//! Page flag bits: their positions per era and the atomic operations on the flags word.
//!
//! Models: include/linux/page-flags.h (v5.10 order for eras up to v5.11, v6.9 order for v6.9).
//!
//! Every PG_* bit of a frame lives in one `AtomicU64`, and every change is an atomic
//! read-modify-write. That is what makes the two handshakes of the protocol sound without
//! explicit fences (SEMANTICS 1.2):
//!
//! * waiter: set PG_waiters (RMW), then test the bit; waker: clear the bit (RMW), then read
//!   PG_waiters. Both RMWs are totally ordered on the one location, so either the waiter's test
//!   sees the clear (and does not sleep) or the waker's read sees PG_waiters (and wakes).
//! * `unlock_page` clears PG_locked and learns PG_waiters in the same RMW.
//!
//! The upper 32 bits hold the **writeback epoch** (model-only, SEMANTICS 6 item 19): the one RMW
//! that sets PG_writeback also increments it, so a single load tells a waiter both "the bit is
//! set" and "which writeback set it". Freeing a frame clears the PG bits but keeps the epoch, so a
//! wake that outlives the frame's owner is still recognised as stale by the next owner's waiter.
//!
//! State table for the bits the race is made of (L = locked, Wt = waiters, W = writeback, D =
//! dirty), in the style of parking_lot's RawMutex:
//!
//! | L | Wt | W | D | meaning |
//! |---|----|---|---|---------|
//! | 0 | 0  | 0 | 0 | idle, clean |
//! | 1 | x  | 0 | 1 | locked for write-out: `clear_page_dirty_for_io` comes next |
//! | 0 | x  | 1 | 0 | under writeback, nobody redirtied it |
//! | x | x  | 1 | 1 | under writeback and redirtied (FAT has no stable pages): what wcp waits on |
//! | x | 1  | x | x | somebody may sleep on this frame's bucket; a hint, false positives allowed |
//!
//! There is deliberately no unconditional "set writeback": only [`Flags::test_and_set_writeback`],
//! as page-flags.h offers only TestSetPageWriteback.

use crate::sync::{AtomicU64, Ordering};

/// The page flags the model uses. Positions come from a [`FlagLayout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PG {
    /// The page lock.
    Locked = 0,
    /// Recently accessed (second chance in reclaim).
    Referenced,
    /// Contents are valid.
    Uptodate,
    /// Contents differ from the disk.
    Dirty,
    /// On the LRU list.
    Lru,
    /// Somebody may be sleeping on this frame's wait-table bucket.
    Waiters,
    /// A write to disk failed.
    Error,
    /// A write to disk is in flight.
    Writeback,
    /// Reclaim wants this page as soon as its writeback ends.
    Reclaim,
}

/// All flags, in the order reports print them.
pub const ALL_FLAGS: [PG; 9] = [
    PG::Locked,
    PG::Referenced,
    PG::Uptodate,
    PG::Dirty,
    PG::Lru,
    PG::Waiters,
    PG::Error,
    PG::Writeback,
    PG::Reclaim,
];

impl PG {
    /// Kernel-style lower-case name, as in the flags line of a page dump.
    pub fn name(self) -> &'static str {
        match self {
            PG::Locked => "locked",
            PG::Referenced => "referenced",
            PG::Uptodate => "uptodate",
            PG::Dirty => "dirty",
            PG::Lru => "lru",
            PG::Waiters => "waiters",
            PG::Error => "error",
            PG::Writeback => "writeback",
            PG::Reclaim => "reclaim",
        }
    }
}

/// Bit positions of the flags in one era's `page-flags.h`.
#[derive(Debug, PartialEq, Eq)]
pub struct FlagLayout {
    /// Human name of the layout.
    pub name: &'static str,
    bits: [u8; 9],
}

/// Up to v6.1: locked=0 .. waiters=7, error=8, writeback=15, reclaim=18 (K510 page-flags.h).
pub static LAYOUT_CLASSIC: FlagLayout = FlagLayout {
    name: "v5.10 page-flags.h",
    //    Locked Ref Upt Dirty Lru Waiters Error Writeback Reclaim
    bits: [0, 1, 2, 3, 4, 7, 8, 15, 18],
};

/// v6.9 and later: writeback moved to bit 1 so one XOR on the low byte can clear it and read
/// PG_waiters (bit 7) at once (K69 page-flags.h).
pub static LAYOUT_MODERN: FlagLayout = FlagLayout {
    name: "v6.9 page-flags.h",
    bits: [0, 2, 3, 4, 5, 7, 10, 1, 18],
};

impl FlagLayout {
    /// The mask of one flag.
    #[inline]
    pub fn mask(&self, f: PG) -> u64 {
        1u64 << self.bits[f as usize]
    }

    /// The bit number of one flag (wait-queue keys are bit numbers, as in the kernel).
    #[inline]
    pub fn bit(&self, f: PG) -> u8 {
        self.bits[f as usize]
    }

    /// Which flag sits at bit `bit`, if any the model uses.
    pub fn flag_at(&self, bit: u8) -> Option<PG> {
        ALL_FLAGS.iter().copied().find(|f| self.bit(*f) == bit)
    }

    /// `locked|dirty|writeback` for a flags word, as a page dump prints it.
    pub fn describe(&self, word: u64) -> String {
        let names: Vec<&str> = ALL_FLAGS
            .iter()
            .filter(|f| word & self.mask(**f) != 0)
            .map(|f| f.name())
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join("|")
        }
    }
}

// unlock_page and the E4 writeback end read PG_waiters from the RMW that clears the low byte
// bit, which only works if PG_waiters is bit 7 of that byte (BUILD_BUG_ON in the kernel).
const _: () = assert!(LAYOUT_CLASSIC.bits[PG::Waiters as usize] == 7);
const _: () = assert!(LAYOUT_MODERN.bits[PG::Waiters as usize] == 7);
const _: () = assert!(LAYOUT_CLASSIC.bits[PG::Locked as usize] == 0);
const _: () = assert!(LAYOUT_MODERN.bits[PG::Locked as usize] == 0);
// The XOR variant needs PG_writeback in bits 0..6 of the same byte.
const _: () = assert!(LAYOUT_MODERN.bits[PG::Writeback as usize] < 7);

/// Mask of every PG bit (the lower half of the word).
pub const PG_BITS: u64 = 0xffff_ffff;
/// Where the writeback epoch starts in the word.
pub const EPOCH_SHIFT: u32 = 32;

/// The writeback epoch stored in a flags word.
#[inline]
pub fn epoch_of(word: u64) -> u32 {
    (word >> EPOCH_SHIFT) as u32
}

/// One frame's flags word.
///
/// Orderings: every RMW is `AcqRel` and every load `Acquire`. The protocol handshakes need only
/// per-location coherence (module doc); the acquire/release pairs are for the data the bits
/// publish: PG_locked's release in unlock pairs with the acquire of the next trylock, so page
/// contents written under the lock are visible to the next holder; PG_writeback's RMW in the
/// completion path pairs with the load in `wait_on_page_writeback`, so whoever sees the bit clear
/// also sees the I/O result recorded before it (PG_error, the mapping's sticky error).
#[derive(Debug, Default)]
pub struct Flags(AtomicU64);

impl Flags {
    /// A word with no flags and epoch 0.
    pub fn new() -> Self {
        Flags(AtomicU64::new(0))
    }

    /// The whole word (flags and epoch).
    #[inline]
    pub fn load(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// True if every bit of `mask` is set.
    #[inline]
    pub fn test(&self, mask: u64) -> bool {
        self.load() & mask != 0
    }

    /// Atomically set `mask`; returns the old word.
    #[inline]
    pub fn set(&self, mask: u64) -> u64 {
        self.0.fetch_or(mask, Ordering::AcqRel)
    }

    /// Atomically clear `mask`; returns the old word.
    #[inline]
    pub fn clear(&self, mask: u64) -> u64 {
        self.0.fetch_and(!mask, Ordering::AcqRel)
    }

    /// Atomically flip `mask`; returns the old word (the E4 `xor_unlock_is_negative_byte`).
    #[inline]
    pub fn xor(&self, mask: u64) -> u64 {
        self.0.fetch_xor(mask, Ordering::AcqRel)
    }

    /// Set `mask` and report whether it was already set.
    #[inline]
    pub fn test_and_set(&self, mask: u64) -> bool {
        self.set(mask) & mask != 0
    }

    /// Clear `mask` and report whether it was set.
    #[inline]
    pub fn test_and_clear(&self, mask: u64) -> bool {
        self.clear(mask) & mask != 0
    }

    /// The trylock RMW: set PG_locked with acquire semantics; returns the old word (the lock
    /// was taken if its PG_locked bit is clear).
    #[inline]
    pub fn test_and_set_lock(&self, locked: u64) -> u64 {
        // Acquire: pairs with the Release in clear_unlock/xor_unlock of the previous holder.
        self.0.fetch_or(locked, Ordering::Acquire)
    }

    /// Clear PG_locked and return the old word, release semantics
    /// (`clear_bit_unlock_is_negative_byte`): the caller reads PG_waiters from the result.
    #[inline]
    pub fn clear_unlock(&self, locked: u64) -> u64 {
        // Release: pairs with the Acquire in test_and_set_lock of the next holder.
        self.0.fetch_and(!locked, Ordering::Release)
    }

    /// XOR-unlock for E4 (`folio_xor_flags_has_waiters`); returns the old word.
    #[inline]
    pub fn xor_unlock(&self, locked: u64) -> u64 {
        // Release: same pairing as clear_unlock.
        self.0.fetch_xor(locked, Ordering::Release)
    }

    /// Set PG_writeback and bump the epoch in one RMW, unless it is already set.
    /// Returns the old word: its writeback bit tells whether the set happened.
    pub fn test_and_set_writeback(&self, writeback: u64) -> u64 {
        let mut old = self.load();
        loop {
            if old & writeback != 0 {
                return old;
            }
            let new = (old | writeback).wrapping_add(1u64 << EPOCH_SHIFT);
            match self
                .0
                .compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return old,
                Err(cur) => old = cur,
            }
        }
    }

    /// Clear `mask` only if none of `unless` is set, in one CAS loop; returns the old word and
    /// whether the clear happened (ALT-A's waiter-free fast path).
    pub fn clear_unless(&self, mask: u64, unless: u64) -> (u64, bool) {
        let mut old = self.load();
        loop {
            if old & unless != 0 {
                return (old, false);
            }
            match self.0.compare_exchange_weak(
                old,
                old & !mask,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (old, true),
                Err(cur) => old = cur,
            }
        }
    }

    /// Clear every PG bit, keeping the epoch: what freeing a frame does to `page->flags`.
    pub fn clear_all_pg(&self) -> u64 {
        self.0.fetch_and(!PG_BITS, Ordering::AcqRel)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn layouts_keep_the_kernel_positions() {
        assert_eq!(LAYOUT_CLASSIC.bit(PG::Writeback), 15);
        assert_eq!(LAYOUT_MODERN.bit(PG::Writeback), 1);
        for l in [&LAYOUT_CLASSIC, &LAYOUT_MODERN] {
            let mut seen = 0u64;
            for f in ALL_FLAGS {
                assert_eq!(seen & l.mask(f), 0, "{f:?} shares a bit in {}", l.name);
                seen |= l.mask(f);
                assert_eq!(l.flag_at(l.bit(f)), Some(f));
            }
            assert_eq!(seen & !PG_BITS, 0);
        }
    }

    #[test]
    fn writeback_set_bumps_epoch_once() {
        let l = &LAYOUT_CLASSIC;
        let f = Flags::new();
        let wb = l.mask(PG::Writeback);
        assert_eq!(f.test_and_set_writeback(wb) & wb, 0);
        assert_eq!(epoch_of(f.load()), 1);
        // Already set: no change, epoch unchanged.
        assert_ne!(f.test_and_set_writeback(wb) & wb, 0);
        assert_eq!(epoch_of(f.load()), 1);
        assert!(f.test_and_clear(wb));
        assert_eq!(f.test_and_set_writeback(wb) & wb, 0);
        assert_eq!(epoch_of(f.load()), 2);
    }

    #[test]
    fn clear_all_keeps_epoch() {
        let l = &LAYOUT_MODERN;
        let f = Flags::new();
        f.test_and_set_writeback(l.mask(PG::Writeback));
        f.set(l.mask(PG::Dirty) | l.mask(PG::Waiters));
        let old = f.clear_all_pg();
        assert_eq!(l.describe(old), "dirty|waiters|writeback");
        assert_eq!(f.load() & PG_BITS, 0);
        assert_eq!(epoch_of(f.load()), 1);
    }

    #[test]
    fn unlock_reports_waiters_from_the_same_rmw() {
        let l = &LAYOUT_CLASSIC;
        let f = Flags::new();
        let (lk, wt) = (l.mask(PG::Locked), l.mask(PG::Waiters));
        assert_eq!(f.test_and_set_lock(lk) & lk, 0);
        assert_ne!(f.test_and_set_lock(lk) & lk, 0);
        f.set(wt);
        let old = f.clear_unlock(lk);
        assert_ne!(old & wt, 0);
        assert!(!f.test(lk));
        assert_eq!(f.test_and_set_lock(lk) & lk, 0);
        assert_ne!(f.xor_unlock(lk) & lk, 0);
        assert!(!f.test(lk));
    }

    #[test]
    fn clear_unless_refuses_when_waiters_appear() {
        let l = &LAYOUT_CLASSIC;
        let f = Flags::new();
        let (wb, wt) = (l.mask(PG::Writeback), l.mask(PG::Waiters));
        f.test_and_set_writeback(wb);
        let (_, done) = f.clear_unless(wb, wt);
        assert!(done);
        f.test_and_set_writeback(wb);
        f.set(wt);
        let (old, done) = f.clear_unless(wb, wt);
        assert!(!done);
        assert_ne!(old & wb, 0);
        assert!(f.test(wb));
    }

    #[test]
    fn describe_names_flags() {
        let l = &LAYOUT_CLASSIC;
        assert_eq!(l.describe(0), "none");
        assert_eq!(
            l.describe(l.mask(PG::Locked) | l.mask(PG::Writeback)),
            "locked|writeback"
        );
    }
}
