//! Per-frame event history: the last [`HISTORY_LEN`] things that happened to a frame.
//!
//! Model-only (the kernel has nothing like it). A BUG report prints this ring so the interleaving
//! that led to the failure can be read off it: which thread cleared PG_writeback, which started
//! the next writeback, which slept, which thread's wake ended the sleep, and with which epoch.
//!
//! The ring is lock-free and invisible to the model checker (`sync::unchecked`): recording an
//! event must not add schedule points to the protocol, nor cost a lock on the lock_page path.
//! Each slot is two words (16 bytes, four to a cache line; a ring is exactly eight lines); the
//! header word doubles as a sequence lock (0 while being written), so a reader racing a writer
//! sees a slot either whole or not at all.
//!
//! A slot is small because every frame has a ring (16,384 rings, 8 MiB, at 64 MiB of cache), so
//! most fields are kept narrower than the values they record, and read back as follows:
//!
//! * seq: only the lap (seq / 32, low [`LAP_BITS`] bits) is stored; the slot number gives
//!   seq % 32, and the frame's event counter, read after the slots, gives the rest. An event
//!   is placed right if it lies within 16 laps (512 events) of that count: a writer that stalls
//!   between numbering its event and storing it while 512 later events land on the same frame
//!   would have its event shown 512 * k events too late.
//! * flags before/after: the 9 modelled flags in 9 bits (those below bit 9 stay, the three that
//!   either layout has above are shifted down into bits that layout leaves unused, see
//!   `PACK_MOVES`), turned back into a flags word at read time through the era's layout
//!   ([`FlagPack`]). This relies on nothing setting any other bit of the word (every flag
//!   operation takes a layout mask; debug builds check part of it here).
//! * epoch: modulo 2^16, and so is every epoch an event carries as its argument (the waker's
//!   epoch of a StaleWake, the new epoch of a SetWriteback): consumers compare them as such.
//! * thread: the low 16 bits of the tag; so is a thread tag carried as argument.
//! * arg: 24 bits; page indexes are exact up to 2^24 pages (64 GiB into a mapping: every FAT
//!   file, and the block-device mapping of volumes up to 64 GiB), generations and wake counts
//!   are shown modulo 2^24.
//! * time: the raw clock in units of 2^[`TIME_SHIFT`] ticks (16 TSC ticks, about 5-8 ns; 16 ns
//!   where quanta falls back to the OS clock), [`TIME_BITS`] bits of it. Absolute values are
//!   rebuilt against a clock reading taken after the slots: events less than 2^44 - 2^36 ticks
//!   before it, or 2^36 after (skew between cores), get their true time; the times of events
//!   further apart are shown modulo 2^44 ticks (1.6 to 2.4 hours at a 2-3 GHz TSC, 4.9 hours at
//!   1 ns a tick).

use std::fmt::Write as _;

use crate::mm::flags::{ALL_FLAGS, FlagLayout, PG_BITS, epoch_of};
use crate::sync::thread_name;
use crate::sync::unchecked::{AtomicU32, AtomicU64, Ordering};

/// Events kept per frame.
pub const HISTORY_LEN: usize = 32;

/// Low bits of an event's seq that the slot number gives (seq % HISTORY_LEN).
const SLOT_BITS: u32 = HISTORY_LEN.trailing_zeros();
const _: () = assert!(HISTORY_LEN.is_power_of_two() && SLOT_BITS <= 8);

/// Bits of the lap (seq / [`HISTORY_LEN`]) a slot keeps.
pub const LAP_BITS: u32 = 4;
/// Laps a reader can tell apart (the lap is stored modulo this).
const LAPS: u32 = 1 << LAP_BITS;
/// A reader whose count moved more than this while it read the slots reads them again: then
/// every slot it keeps holds an event within `LAPS` laps of the later count (a slot can be
/// one lap behind the earlier count, plus the lap being written), which the lap bits place.
///
/// The same check keeps the sequence lock sound now that a header no longer holds the whole
/// seq: every rewrite of a slot changes its lap bits, so a header can come back only after
/// `LAPS` rewrites of the slot, and a read that straddled those saw the count move by more
/// than this.
const MAX_TURN: u32 = (LAPS - 2) * HISTORY_LEN as u32;
/// Reads of the ring before `events` decodes what it has even if the ring kept turning.
const READ_TRIES: usize = 4;

/// A timestamp is stored in units of 2^TIME_SHIFT raw clock ticks.
pub const TIME_SHIFT: u32 = 4;
/// Bits of the stored timestamp.
pub const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// A stored time up to this many units after the reader's clock reading is taken as being in
/// its future (TSCs of two cores differ a little, and the reading is not ordered with the
/// slot loads), not as an event a whole span ago. 2^36 ticks: about half a minute.
const TIME_FUTURE: u64 = 1 << (TIME_BITS - 8);

/// Bits of the argument a slot keeps.
pub const ARG_BITS: u32 = 24;
const ARG_MASK: u64 = (1 << ARG_BITS) - 1;
/// Bits of an epoch (and of a thread tag) in the history.
pub const EPOCH_BITS: u32 = 16;

// Header word, low to high: op (never 0, so a written header is never 0), bit, lap, thread,
// epoch, flags before, flags after. 5 + 5 + 4 + 16 + 16 + 9 + 9 = 64.
const H_OP: u32 = 0;
const H_BIT: u32 = 5;
const H_LAP: u32 = 10;
const H_THREAD: u32 = H_LAP + LAP_BITS;
const H_EPOCH: u32 = H_THREAD + 16;
const H_BEFORE: u32 = H_EPOCH + EPOCH_BITS;
const H_AFTER: u32 = H_BEFORE + FLAG_BITS;
const _: () = assert!(H_AFTER + FLAG_BITS == 64);
// Data word: arg in the low bits, time above it.
const _: () = assert!(ARG_BITS + TIME_BITS == 64);
/// Modelled flags, one bit each in the packed form.
const FLAG_BITS: u32 = ALL_FLAGS.len() as u32;
const FLAG_MASK: u64 = (1 << FLAG_BITS) - 1;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Frame handed out by the allocator (arg: generation, modulo 2^24).
    Alloc = 1,
    /// Frame returned to the free list.
    Free,
    /// Inserted into a mapping (arg: index).
    AddToCache,
    /// Removed from its mapping (arg: index).
    DeleteFromCache,
    /// PG_locked taken (arg: 1 if the taker slept first).
    Lock,
    /// PG_locked released.
    Unlock,
    /// PG_dirty set.
    SetDirty,
    /// PG_dirty cleared for I/O.
    ClearDirtyForIo,
    /// PG_dirty cancelled (truncate).
    CancelDirty,
    /// PG_writeback set (epoch: the new writeback; arg: the same, modulo 2^16).
    SetWriteback,
    /// PG_writeback cleared (epoch: the writeback that ended).
    ClearWriteback,
    /// A waker walked the bucket for this frame (arg: entries woken).
    Wake,
    /// This thread's wait on a bit started (bit: which; epoch: the writeback it waits for).
    WaitStart,
    /// This thread's wait ended (arg: the thread that woke it, 0 if none; epoch: of the waker).
    WaitEnd,
    /// A wait ended by a wake from an older writeback epoch (arg: waker's epoch, modulo 2^16).
    StaleWake,
    /// The waker refused to wake (bit set again; E0 / ALT-B).
    WakeRefused,
    /// The frame was reclaimed.
    Reclaim,
    /// A BUG or VM_BUG fired on this frame.
    Bug,
}

const _: () = assert!((Op::Bug as u32) < (1 << H_BIT));

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        const ALL: [Op; 18] = [
            Alloc,
            Free,
            AddToCache,
            DeleteFromCache,
            Lock,
            Unlock,
            SetDirty,
            ClearDirtyForIo,
            CancelDirty,
            SetWriteback,
            ClearWriteback,
            Wake,
            WaitStart,
            WaitEnd,
            StaleWake,
            WakeRefused,
            Reclaim,
            Bug,
        ];
        ALL.iter().copied().find(|o| *o as u8 == v)
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Alloc => "alloc",
            Op::Free => "free",
            Op::AddToCache => "add_to_page_cache",
            Op::DeleteFromCache => "delete_from_page_cache",
            Op::Lock => "lock_page",
            Op::Unlock => "unlock_page",
            Op::SetDirty => "set_page_dirty",
            Op::ClearDirtyForIo => "clear_page_dirty_for_io",
            Op::CancelDirty => "cancel_dirty_page",
            Op::SetWriteback => "set_page_writeback",
            Op::ClearWriteback => "clear_page_writeback",
            Op::Wake => "wake_up_page_bit",
            Op::WaitStart => "wait_on_page_bit:sleep",
            Op::WaitEnd => "wait_on_page_bit:woken",
            Op::StaleWake => "STALE WAKE",
            Op::WakeRefused => "wake refused (bit set)",
            Op::Reclaim => "reclaim",
            Op::Bug => "BUG",
        }
    }

    /// How many low bits of the recorded argument the history gives back: epochs and thread
    /// tags are kept at 16 bits wherever they appear, so they compare equal to the `epoch`
    /// and `thread` fields of other events.
    fn arg_mask(self) -> u32 {
        match self {
            Op::SetWriteback | Op::StaleWake | Op::WaitEnd => (1 << EPOCH_BITS) - 1,
            _ => ARG_MASK as u32,
        }
    }
}

/// One recorded event, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Per-frame sequence number (1 = first event ever on this frame).
    pub seq: u32,
    /// Thread tag (see `sync::thread_tag`), low 16 bits.
    pub thread: u16,
    /// What happened.
    pub op: Op,
    /// Bit involved (waits), or 0.
    pub bit: u8,
    /// Raw timestamp (the cache converts it to nanoseconds), to 2^TIME_SHIFT ticks.
    pub t_raw: u64,
    /// PG bits before (the modelled flags).
    pub before: u32,
    /// PG bits after (the modelled flags).
    pub after: u32,
    /// Writeback epoch the event belongs to, modulo 2^16.
    pub epoch: u16,
    /// Op-specific argument (see [`Op`]; epochs and thread tags modulo 2^16, the rest 2^24).
    pub arg: u32,
}

#[derive(Debug, Default)]
struct Slot {
    header: AtomicU64,
    data: AtomicU64,
}

/// The ring of one frame. Aligned to a cache line so that no slot straddles two.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct History {
    slots: [Slot; HISTORY_LEN],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);
const _: () = assert!(std::mem::size_of::<History>() == 16 * HISTORY_LEN);

/// Arguments of one [`History::record`] call.
#[derive(Clone, Copy, Debug)]
pub struct Rec {
    /// What happened.
    pub op: Op,
    /// Bit (for waits) or 0.
    pub bit: u8,
    /// Flags word before (epoch in the upper half).
    pub before: u64,
    /// Flags word after.
    pub after: u64,
    /// Op-specific argument.
    pub arg: u32,
}

/// Flag bits that keep their place in the packed form: the layouts' flags below bit 9.
const PACK_KEEP: u64 = 0x1bf;
/// (shift, destination) of each flag bit moved down into the packed form, one map for every
/// layout: 18 (reclaim in both) to 6, 15 (classic writeback) to 5, 10 (modern error) to 8.
/// A destination may also be a kept bit or another move's, but only one of the sources that
/// reach it is a flag in any one layout, and nothing sets a bit that is not (every flag
/// operation takes a layout mask), so nothing collides: [`FlagPack::new`] checks that for
/// its layout.
const PACK_MOVES: [(u32, u64); 3] = [(12, 1 << 6), (10, 1 << 5), (2, 1 << 8)];
/// Every bit the packed form keeps.
const PACK_SOURCES: u64 = PACK_KEEP | (1 << 18) | (1 << 15) | (1 << 10);

/// The flags of `before` in bits 0..9 and those of `after` in bits 32..41 (constants only, so
/// the recording path needs no layout: a mask and three shift-and-masks a word, where gathering
/// the flags one by one was some 40 instructions a word).
#[inline]
fn pack_pair(before: u64, after: u64) -> u64 {
    // Every flag lies below bit 19, so the low halves are enough; u32 keeps the masks short.
    let pack = |w: u64| {
        let w = w as u32;
        let [(s0, m0), (s1, m1), (s2, m2)] = PACK_MOVES;
        (w & PACK_KEEP as u32)
            | ((w >> s0) & m0 as u32)
            | ((w >> s1) & m1 as u32)
            | ((w >> s2) & m2 as u32)
    };
    u64::from(pack(before)) | (u64::from(pack(after)) << 32)
}

/// Where one layout's flags are in the packed form, for reading them back.
#[derive(Clone, Copy, Debug)]
pub struct FlagPack {
    /// The layout the flags words are in.
    pub layout: &'static FlagLayout,
    /// The packed bit of each flag, in [`ALL_FLAGS`] order.
    dest: [u32; ALL_FLAGS.len()],
}

impl FlagPack {
    /// The places of `layout`'s flags. Panics if the packed form has no place for one of them
    /// or two of them could land on one bit (no era's layout does; the tests build both).
    pub fn new(layout: &'static FlagLayout) -> Self {
        let modelled: u64 = ALL_FLAGS.iter().map(|f| layout.mask(*f)).sum();
        let mut dest = [0; ALL_FLAGS.len()];
        for (d, f) in dest.iter_mut().zip(ALL_FLAGS) {
            let bit = u32::from(layout.bit(f));
            *d = if PACK_KEEP & (1 << bit) != 0 {
                bit
            } else {
                PACK_MOVES
                    .iter()
                    .find(|(s, m)| bit >= *s && *m == 1 << (bit - s))
                    .map(|(s, _)| bit - s)
                    .unwrap_or_else(|| panic!("{}: no packed place for bit {bit}", layout.name))
            };
        }
        for to in 0..FLAG_BITS {
            // The bits that pack_pair can put on `to`: at most one may be a flag here.
            let kept = PACK_KEEP & (1 << to) != 0;
            let moved = PACK_MOVES.iter().filter(|(_, m)| *m == 1 << to);
            let sources = kept
                .then_some(to)
                .into_iter()
                .chain(moved.map(|(s, _)| to + s));
            let flags = sources.filter(|b| modelled & (1 << b) != 0).count();
            assert!(flags <= 1, "{}: two flags packed on bit {to}", layout.name);
        }
        FlagPack { layout, dest }
    }

    /// The flags word of 9 packed bits (one half of a [`pack_pair`]).
    fn unpack(&self, packed: u64) -> u32 {
        let mut word = 0;
        for (d, f) in self.dest.iter().zip(ALL_FLAGS) {
            if packed & (1 << d) != 0 {
                word |= self.layout.mask(f);
            }
        }
        word as u32
    }
}

impl History {
    /// Append event number `seq` of this frame (overwriting the one 32 events older).
    ///
    /// The caller numbers events from a counter kept in the frame, not here: the frame's cache
    /// line was just written by the flag operation being recorded, while a ring is usually
    /// cold (8 MiB of them at 64 MiB of cache), and a locked increment of a cold line stalls
    /// for the whole miss where the plain stores below retire through the store buffer. That
    /// was a quarter of the user CPU of a sequential read. The same counter, read back by
    /// [`History::events`], gives the seq bits the slot does not keep.
    pub fn record(&self, seq: u32, rec: Rec, thread: u32, t_raw: u64) {
        debug_assert!(u32::from(rec.bit) < 1 << (H_LAP - H_BIT), "bit {}", rec.bit);
        debug_assert_eq!(
            (rec.before | rec.after) & PG_BITS & !PACK_SOURCES,
            0,
            "a bit the history does not keep"
        );
        let epoch = epoch_of(rec.after).max(epoch_of(rec.before));
        let flags = pack_pair(rec.before, rec.after);
        let header = ((rec.op as u64) << H_OP)
            | (u64::from(rec.bit) << H_BIT)
            | (u64::from((seq >> SLOT_BITS) & (LAPS - 1)) << H_LAP)
            | (u64::from(thread & 0xffff) << H_THREAD)
            | (u64::from(epoch & 0xffff) << H_EPOCH)
            | ((flags & FLAG_MASK) << H_BEFORE)
            | ((flags >> 32) << H_AFTER);
        // The shift left drops the time's bits above TIME_BITS.
        let data = (u64::from(rec.arg) & ARG_MASK) | ((t_raw >> TIME_SHIFT) << ARG_BITS);
        let slot = &self.slots[(seq as usize) % HISTORY_LEN];
        slot.header.store(0, Ordering::Relaxed);
        // Release fence: pairs with the reader's Acquire fence in `events`. A reader whose
        // data load sees the store below then sees this 0 (or a later header) on its re-read,
        // so it cannot take the new data word for the old header's event (the seqlock's write
        // side; without the fence the data store could become visible before the 0).
        std::sync::atomic::fence(Ordering::Release);
        slot.data.store(data, Ordering::Relaxed);
        // Release: pairs with the Acquire in `events`; a reader that sees this header sees the
        // data word stored above (and the caller's increment of the frame's event counter).
        slot.header.store(header, Ordering::Release);
    }

    /// The recorded events, oldest first; slots being rewritten right now are left out.
    ///
    /// `count` is the frame's event counter (the one the recorder's `seq` comes from), and
    /// `now_raw` reads the clock the timestamps come from; both are read after the slots, so
    /// every event read is numbered at most `count` and (up to clock skew) stamped before the
    /// reading. `pack` is the one the events were recorded with.
    pub fn events(
        &self,
        pack: &FlagPack,
        count: &AtomicU32,
        now_raw: &dyn Fn() -> u64,
    ) -> Vec<Event> {
        let mut raw = [(0u64, 0u64); HISTORY_LEN];
        let mut last = 0;
        for _ in 0..READ_TRIES {
            // Acquire: the slot loads below cannot be served before this count, so a slot they
            // read holds an event numbered after this count, less a lap or two, or a stalled
            // writer's (see the module doc).
            let first = count.load(Ordering::Acquire);
            for (slot, out) in self.slots.iter().zip(raw.iter_mut()) {
                *out = (0, 0);
                let h1 = slot.header.load(Ordering::Acquire);
                if h1 == 0 {
                    continue;
                }
                let data = slot.data.load(Ordering::Relaxed);
                // Acquire fence: the data load above cannot move after the re-read below, and
                // with the writer's Release fence, a header unchanged across the two reads
                // means no writer's data store was seen, so the data belongs to that header
                // (or the same header came back, which the count check below rules out).
                std::sync::atomic::fence(Ordering::Acquire);
                // Acquire: if this reads a later writer's header, the count read below sees
                // that writer's number, so the check below sees the slot was rewritten.
                if slot.header.load(Ordering::Acquire) == h1 {
                    *out = (h1, data);
                }
            }
            // Every header read above was read with Acquire from a writer that had already
            // taken its number from `count`, so this load sees at least that number.
            last = count.load(Ordering::Relaxed);
            if last.wrapping_sub(first) <= MAX_TURN {
                break;
            }
        }
        let now = now_raw() >> TIME_SHIFT;
        let mut out: Vec<Event> = raw
            .iter()
            .enumerate()
            .filter_map(|(i, &(h, d))| decode(pack, i, h, d, last, now))
            .collect();
        // Oldest first: by distance from the count, so numbers that wrapped past 2^32 sort too.
        out.sort_by_key(|e| std::cmp::Reverse(last.wrapping_sub(e.seq)));
        out
    }

    /// The events as report lines; `to_ns` turns a raw timestamp into nanoseconds (the other
    /// arguments as for [`History::events`]).
    pub fn render(
        &self,
        pack: &FlagPack,
        count: &AtomicU32,
        now_raw: &dyn Fn() -> u64,
        to_ns: &dyn Fn(u64) -> u64,
    ) -> String {
        render_events(&self.events(pack, count, now_raw), pack.layout, to_ns)
    }
}

/// The event in slot `slot` from its two words (None for an empty slot), with `count` the
/// frame's event counter and `now` the clock in stored units, both read after the slot.
fn decode(pack: &FlagPack, slot: usize, h: u64, d: u64, count: u32, now: u64) -> Option<Event> {
    let op = Op::from_u8(((h >> H_OP) & ((1 << H_BIT) - 1)) as u8)?;
    // The newest number at most `count` that lands in this slot, then back by as many laps as
    // its lap is ahead of the stored one.
    let newest = count.wrapping_sub(count.wrapping_sub(slot as u32) % HISTORY_LEN as u32);
    let lap = ((h >> H_LAP) as u32) & (LAPS - 1);
    let back = ((newest >> SLOT_BITS).wrapping_sub(lap)) & (LAPS - 1);
    let seq = newest.wrapping_sub(back << SLOT_BITS);
    // The latest time with the stored low bits that is not after the reading (allowing a
    // little skew the other way).
    let stored = d >> ARG_BITS;
    let ago = now.wrapping_sub(stored) & TIME_MASK;
    let t = if ago > TIME_MASK - TIME_FUTURE {
        now + (TIME_MASK + 1 - ago)
    } else {
        now.saturating_sub(ago)
    };
    Some(Event {
        seq,
        thread: (h >> H_THREAD) as u16,
        op,
        bit: ((h >> H_BIT) & ((1 << (H_LAP - H_BIT)) - 1)) as u8,
        t_raw: t << TIME_SHIFT,
        before: pack.unpack((h >> H_BEFORE) & FLAG_MASK),
        after: pack.unpack((h >> H_AFTER) & FLAG_MASK),
        epoch: (h >> H_EPOCH) as u16,
        arg: (d & ARG_MASK) as u32 & op.arg_mask(),
    })
}

/// `events` (from [`History::events`]) as report lines, times from the first event.
pub fn render_events(events: &[Event], layout: &FlagLayout, to_ns: &dyn Fn(u64) -> u64) -> String {
    let mut s = String::new();
    let t0 = events.first().map(|e| to_ns(e.t_raw)).unwrap_or(0);
    for e in events {
        let bit = match e.op {
            Op::WaitStart | Op::WaitEnd | Op::StaleWake | Op::Wake | Op::WakeRefused => {
                match layout.flag_at(e.bit) {
                    Some(f) => format!(" bit={}", f.name()),
                    None => format!(" bit={}", e.bit),
                }
            }
            _ => String::new(),
        };
        let arg = match e.op {
            Op::WaitEnd if e.arg != 0 => format!(" woken-by={}", thread_name(e.arg)),
            Op::WaitEnd => " woken-by=none".to_string(),
            Op::StaleWake => format!(" waker-epoch={}", e.arg),
            Op::Wake => format!(" woke={}", e.arg),
            Op::AddToCache | Op::DeleteFromCache => format!(" index={}", e.arg),
            Op::Lock if e.arg != 0 => " (after sleeping)".to_string(),
            Op::Alloc => format!(" gen={}", e.arg),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "  #{:<5} +{:>9.3}ms {:<28} {:<26} epoch={:<3} {} -> {}{}{}",
            e.seq,
            (to_ns(e.t_raw).saturating_sub(t0)) as f64 / 1e6,
            thread_name(u32::from(e.thread)),
            e.op.name(),
            e.epoch,
            layout.describe(u64::from(e.before)),
            layout.describe(u64::from(e.after)),
            bit,
            arg,
        );
    }
    s
}

/// Reads the roles of SEMANTICS S1 off a frame's events, for a report made on thread
/// `waiter` (the one whose check failed): its last writeback wait ended by a wake from an
/// older epoch; which thread cleared that epoch's PG_writeback and when it woke the waiters;
/// which thread started the writeback that was in flight when the wake came; who redirtied
/// the page. None when the events do not show a stale wake ending `waiter`'s wait (the
/// reason lies elsewhere, or the ring has already lost the events).
pub fn explain_stale_wake(
    events: &[Event],
    waiter: u32,
    writeback_bit: u8,
    to_ns: &dyn Fn(u64) -> u64,
) -> Option<String> {
    let waiter = u16::try_from(waiter).ok()?;
    let is = |e: &Event, op: Op| e.op == op && e.thread == waiter && e.bit == writeback_bit;
    let end = events.iter().rposition(|e| is(e, Op::WaitEnd))?;
    // The stale wake is the waiter's last event before its wait ended. Other threads' events
    // may fall between the two: the waker records its own wake after walking the queue, which
    // can land after the woken thread noted the stale wake and before it noted the end (CI
    // saw #23 stale wake, #24 the waker's wake, #25 end of wait, and the report lost its
    // interleaving section when this asked for the two to be adjacent).
    let stale = events[..end]
        .iter()
        .rposition(|e| is(e, Op::StaleWake))
        .filter(|&i| events[i + 1..end].iter().all(|e| e.thread != waiter))?;
    // Both sides are epochs modulo 2^16 (the history keeps no more of either).
    let old_epoch = events[stale].arg as u16;
    let waker = u16::try_from(events[end].arg).ok()?;
    let sleep = events[..stale].iter().rposition(|e| is(e, Op::WaitStart))?;
    let clear = events[..end]
        .iter()
        .rposition(|e| e.op == Op::ClearWriteback && e.epoch == old_epoch)?;
    // The waker records its wake after walking the queue, so the woken thread may report
    // before that event is in the ring: then the woken thread's own end of wait stands in.
    let wake = events[clear..end]
        .iter()
        .position(|e| e.op == Op::Wake && e.thread == waker && e.bit == writeback_bit)
        .map_or(end, |i| clear + i);
    let start = events[clear..end]
        .iter()
        .position(|e| e.op == Op::SetWriteback)
        .map(|i| clear + i);
    let redirty = start.and_then(|st| {
        events[st..sleep]
            .iter()
            .rposition(|e| e.op == Op::SetDirty)
            .map(|i| st + i)
    });
    let t0 = events.first().map_or(0, |e| to_ns(e.t_raw));
    let at = |i: usize| (to_ns(events[i].t_raw).saturating_sub(t0)) as f64 / 1e6;
    let who = |i: usize| thread_name(u32::from(events[i].thread));
    let mut s = String::new();
    let _ = writeln!(s, "interleaving (SEMANTICS S1), read off the history:");
    let _ = writeln!(
        s,
        "  CPU1 {}: ends writeback epoch {old_epoch}: clears PG_writeback at +{:.3}ms, \
         wakes the waiters at +{:.3}ms ({:.3} ms later)",
        who(clear),
        at(clear),
        at(wake),
        at(wake) - at(clear),
    );
    match start {
        Some(st) => {
            let _ = writeln!(
                s,
                "  CPU2 {}: starts writeback epoch {} at +{:.3}ms, between CPU1's clear and \
                 its wake",
                who(st),
                events[st].epoch,
                at(st),
            );
        }
        None => {
            let _ = writeln!(
                s,
                "  CPU2 (not in the ring): the writeback now in flight started after CPU1's \
                 clear"
            );
        }
    }
    if let Some(d) = redirty {
        let _ = writeln!(
            s,
            "       {}: redirties the page at +{:.3}ms",
            who(d),
            at(d)
        );
    }
    let _ = writeln!(
        s,
        "  CPU3 {}: sleeps on PG_writeback (epoch {}) at +{:.3}ms; CPU1's wake for epoch \
         {old_epoch} ends that sleep at +{:.3}ms, a stale wake: the writeback it waited for \
         is still in flight",
        who(sleep),
        events[sleep].epoch,
        at(sleep),
        at(end),
    );
    Some(s)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::flags::{LAYOUT_CLASSIC, LAYOUT_MODERN, PG};

    /// A clock reading for tests: far from 0, so times before and after it both exist.
    const NOW: u64 = 0x7_1234_5678_9abc;

    fn classic() -> FlagPack {
        FlagPack::new(&LAYOUT_CLASSIC)
    }

    /// `rec` as event number `seq` of `h`, with the frame's counter moved to it first.
    fn put(h: &History, count: &AtomicU32, seq: u32, rec: Rec, thread: u32, t_raw: u64) {
        count.store(seq, Ordering::Relaxed);
        h.record(seq, rec, thread, t_raw);
    }

    /// Records event `seq` (`rec`'s fields) of `thread` at 1 us per number, ending before NOW.
    #[allow(clippy::too_many_arguments)]
    fn put_at_seq(
        h: &History,
        count: &AtomicU32,
        seq: u32,
        (op, bit): (Op, u8),
        before: u64,
        after: u64,
        arg: u32,
        thread: u32,
    ) {
        let t = NOW - 100_000 + u64::from(seq) * 1000;
        put(h, count, seq, rec(op, bit, before, after, arg), thread, t);
    }

    fn events_at(h: &History, count: &AtomicU32, now: u64) -> Vec<Event> {
        h.events(&classic(), count, &|| now)
    }

    fn rec(op: Op, bit: u8, before: u64, after: u64, arg: u32) -> Rec {
        Rec {
            op,
            bit,
            before,
            after,
            arg,
        }
    }

    fn lock_rec(arg: u32) -> Rec {
        rec(Op::Lock, 0, 0, LAYOUT_CLASSIC.mask(PG::Locked), arg)
    }

    #[test]
    fn every_set_of_flags_packs_into_9_bits_and_back() {
        for layout in [&LAYOUT_CLASSIC, &LAYOUT_MODERN] {
            let pack = FlagPack::new(layout);
            let all: u64 = ALL_FLAGS.iter().map(|f| layout.mask(*f)).sum();
            for set in 0u32..1 << ALL_FLAGS.len() {
                let word: u64 = (0..ALL_FLAGS.len())
                    .filter(|i| set >> i & 1 != 0)
                    .map(|i| layout.mask(ALL_FLAGS[i]))
                    .sum();
                // The other word of the pair: its complement, so both halves are busy.
                let other: u64 = all & !word;
                let both = pack_pair(word | (0xdead_beef << 32), other | (7 << 32));
                let (lo, hi) = (both & 0xffff_ffff, both >> 32);
                assert!(
                    lo <= FLAG_MASK && hi <= FLAG_MASK,
                    "{}: {set:#b}",
                    layout.name
                );
                assert_eq!(u64::from(pack.unpack(lo)), word, "{}", layout.name);
                assert_eq!(u64::from(pack.unpack(hi)), other, "{}", layout.name);
            }
        }
    }

    #[test]
    fn ring_keeps_the_last_events_in_order() {
        let h = History::default();
        let count = AtomicU32::new(0);
        let l = &LAYOUT_CLASSIC;
        for i in 0..(HISTORY_LEN as u32 + 5) {
            put(
                &h,
                &count,
                i + 1,
                lock_rec(i),
                3,
                u64::from(i) << TIME_SHIFT,
            );
        }
        let ev = events_at(&h, &count, NOW);
        assert_eq!(ev.len(), HISTORY_LEN);
        assert_eq!(ev[0].seq, 6);
        assert_eq!(ev[0].arg, 5);
        assert!(ev.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(ev[0].after, l.mask(PG::Locked) as u32);
    }

    #[test]
    fn render_names_ops_flags_and_epochs() {
        let h = History::default();
        let count = AtomicU32::new(0);
        let l = &LAYOUT_CLASSIC;
        let wb = l.mask(PG::Writeback) | (2u64 << 32);
        put(
            &h,
            &count,
            1,
            Rec {
                op: Op::SetWriteback,
                bit: 0,
                before: 0,
                after: wb,
                arg: 0,
            },
            1,
            10,
        );
        let text = h.render(&classic(), &count, &|| NOW, &|r| r);
        assert!(text.contains("set_page_writeback"), "{text}");
        assert!(text.contains("epoch=2"), "{text}");
        assert!(text.contains("none -> writeback"), "{text}");
    }

    #[test]
    fn every_field_round_trips_at_its_extremes() {
        for layout in [&LAYOUT_CLASSIC, &LAYOUT_MODERN] {
            let all: u64 = ALL_FLAGS.iter().map(|f| layout.mask(*f)).sum();
            let wb = layout.mask(PG::Writeback);
            // (op, bit, before, after, arg, thread): arg and thread come back as the
            // module doc says (24 bits; 16 for epochs and thread tags).
            let cases: [(Op, u8, u64, u64, u32, u32); 8] = [
                (Op::Alloc, 0, 0, all, u32::MAX, u32::from(u16::MAX)),
                (Op::AddToCache, 0, all, 0, (1 << 24) - 1, 1),
                (Op::DeleteFromCache, 0, all, all, 1 << 20, 0x1_0005),
                (Op::WaitStart, 18, wb | (0xffff << 32), wb, 0, 7),
                (Op::WaitEnd, 31, 0, 0, 0x1_fffe, 8),
                (Op::StaleWake, 15, wb | (0x1_0000 << 32), wb, 0x1_0000, 9),
                (Op::SetWriteback, 1, 0, wb | (0x1_2345 << 32), 0x1_2345, 10),
                (Op::Bug, 0, all | (u64::from(u32::MAX) << 32), all, 3, 11),
            ];
            let h = History::default();
            let count = AtomicU32::new(0);
            let pack = FlagPack::new(layout);
            for (i, &(op, bit, before, after, arg, thread)) in cases.iter().enumerate() {
                let seq = i as u32 + 1;
                let r = rec(op, bit, before, after, arg);
                put(&h, &count, seq, r, thread, NOW - 1000 + seq as u64 * 16);
            }
            let ev = h.events(&pack, &count, &|| NOW);
            assert_eq!(ev.len(), cases.len(), "{}", layout.name);
            let want_arg = [
                (1 << 24) - 1,
                (1 << 24) - 1,
                1 << 20,
                0,
                0xfffe,
                0,
                0x2345,
                3,
            ];
            let want_epoch = [0, 0, 0, 0xffff, 0, 0, 0x2345, 0xffff];
            let want_thread = [u16::MAX, 1, 5, 7, 8, 9, 10, 11];
            for (i, e) in ev.iter().enumerate() {
                let (op, bit, before, after, _, _) = cases[i];
                let ctx = format!("{} case {i}: {e:?}", layout.name);
                assert_eq!(e.seq, i as u32 + 1, "{ctx}");
                assert_eq!(e.op, op, "{ctx}");
                assert_eq!(e.bit, bit, "{ctx}");
                assert_eq!(u64::from(e.before), before & PG_BITS, "{ctx}");
                assert_eq!(u64::from(e.after), after & PG_BITS, "{ctx}");
                assert_eq!(e.arg, want_arg[i], "{ctx}");
                assert_eq!(e.epoch, want_epoch[i], "{ctx}");
                assert_eq!(e.thread, want_thread[i], "{ctx}");
                assert_eq!(e.t_raw, (NOW - 1000 + (i as u64 + 1) * 16) & !15, "{ctx}");
            }
            // A StaleWake's waker epoch and the epoch of the clear it names are cut alike.
            assert_eq!(u32::from(ev[5].epoch), ev[5].arg, "{:?}", ev[5]);
        }
    }

    #[test]
    fn seq_is_rebuilt_across_many_laps_and_the_u32_wrap() {
        let h = History::default();
        let count = AtomicU32::new(0);
        let start = u32::MAX - 7 * HISTORY_LEN as u32 - 3;
        let mut seq = start;
        // 100 laps, through 2^32: after every event the ring holds the last 32 (or fewer).
        for n in 1..=100 * HISTORY_LEN as u32 {
            seq = seq.wrapping_add(1);
            put(&h, &count, seq, lock_rec(seq & 0xff_ffff), 1, NOW);
            if n % 7 != 0 && n < 90 * HISTORY_LEN as u32 {
                continue;
            }
            // Read with the count where the last writer left it, and as other writers would
            // leave it, having taken the next numbers without storing their events yet.
            for ahead in [0, 1, n % HISTORY_LEN as u32, HISTORY_LEN as u32] {
                count.store(seq.wrapping_add(ahead), Ordering::Relaxed);
                let ev = events_at(&h, &count, NOW);
                let kept = n.min(HISTORY_LEN as u32);
                assert_eq!(ev.len() as u32, kept, "after {n}, {ahead} ahead");
                for (k, e) in ev.iter().enumerate() {
                    let want = seq.wrapping_sub(kept - 1 - k as u32);
                    assert_eq!(e.seq, want, "after {n}, {ahead} ahead: {ev:?}");
                    assert_eq!(e.arg, want & 0xff_ffff, "after {n}");
                }
            }
        }
    }

    #[test]
    fn counter_ahead_of_the_slots_still_places_each_event() {
        let h = History::default();
        let count = AtomicU32::new(0);
        for s in 1..=1000 {
            put(&h, &count, s, lock_rec(s), 1, NOW);
        }
        // Writers have taken numbers 1001..1000+k but stored nothing yet: the slots still
        // hold the previous lap, up to a whole lap behind the count.
        for k in [1, 5, HISTORY_LEN as u32 - 1, HISTORY_LEN as u32] {
            count.store(1000 + k, Ordering::Relaxed);
            let ev = events_at(&h, &count, NOW);
            let seqs: Vec<u32> = ev.iter().map(|e| e.seq).collect();
            let want: Vec<u32> = (1000 - HISTORY_LEN as u32 + 1..=1000).collect();
            assert_eq!(seqs, want, "count ahead by {k}");
            assert!(ev.iter().all(|e| e.arg == e.seq), "count ahead by {k}");
        }
        // One of them is halfway through its slot (header 0): that slot is left out.
        let slot = &h.slots[1001 % HISTORY_LEN];
        slot.header.store(0, Ordering::Relaxed);
        let ev = events_at(&h, &count, NOW);
        assert_eq!(ev.len(), HISTORY_LEN - 1);
        assert!(ev.iter().all(|e| e.seq != 1001 - HISTORY_LEN as u32));
        assert!(ev.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn times_keep_their_resolution_and_wrap_as_documented() {
        let unit = 1u64 << TIME_SHIFT;
        let span = 1u64 << (TIME_BITS + TIME_SHIFT);
        // (recorded, shown): the clock reading is NOW, after every event but the future one.
        let cases = [
            (NOW, NOW & !(unit - 1)),
            (NOW - 1, (NOW - 1) & !(unit - 1)),
            (NOW - unit, (NOW - unit) & !(unit - 1)),
            // A whole span ago less the allowance for the future: still its true time.
            (NOW - span / 2, (NOW - span / 2) & !(unit - 1)),
            (
                NOW - span + span / 128,
                (NOW - span + span / 128) & !(unit - 1),
            ),
            // Slightly in the reading's future (another core's TSC): shown there.
            (NOW + 5000, (NOW + 5000) & !(unit - 1)),
            // More than a span ago: shown modulo the span.
            (NOW - span - 4096, (NOW - 4096) & !(unit - 1)),
            (NOW - 3 * span - 160, (NOW - 160) & !(unit - 1)),
        ];
        let h = History::default();
        let count = AtomicU32::new(0);
        for (i, &(t, _)) in cases.iter().enumerate() {
            put(&h, &count, i as u32 + 1, lock_rec(0), 1, t);
        }
        let ev = events_at(&h, &count, NOW);
        assert_eq!(ev.len(), cases.len());
        for (e, &(t, shown)) in ev.iter().zip(&cases) {
            assert_eq!(e.t_raw, shown, "recorded {t:#x}: {e:?}");
        }
        // Differences between events come out in raw ticks, to the unit.
        assert_eq!(ev[0].t_raw - ev[2].t_raw, unit);
        // A clock near zero (a fresh OS clock) does not wrap a past event into the future.
        let h = History::default();
        put(&h, &count, 1, lock_rec(0), 1, 10 * unit);
        let ev = events_at(&h, &count, 20 * unit);
        assert_eq!(ev[0].t_raw, 10 * unit);
    }

    #[test]
    fn stale_wake_roles_match_across_the_epoch_wrap() {
        let l = &LAYOUT_CLASSIC;
        let wb = l.mask(PG::Writeback);
        let wbit = l.bit(PG::Writeback);
        let (old, new) = (0xffffu64, 0x1_0000u64); // the new epoch is 0 modulo 2^16
        let h = History::default();
        let count = AtomicU32::new(0);
        let ev = |seq, op, bit, before, after, arg, thread| {
            put_at_seq(&h, &count, seq, (op, bit), before, after, arg, thread);
        };
        ev(1, Op::ClearWriteback, 0, wb | old << 32, old << 32, 0, 2);
        ev(
            2,
            Op::SetWriteback,
            0,
            old << 32,
            wb | new << 32,
            new as u32,
            4,
        );
        ev(3, Op::WaitStart, wbit, wb | new << 32, wb | new << 32, 0, 3);
        ev(
            4,
            Op::StaleWake,
            wbit,
            wb | new << 32,
            wb | new << 32,
            old as u32,
            3,
        );
        ev(5, Op::WaitEnd, wbit, wb | new << 32, wb | new << 32, 2, 3);
        let events = events_at(&h, &count, NOW);
        let why = explain_stale_wake(&events, 3, wbit, &|r| r).expect("the roles are found");
        assert!(why.contains("ends writeback epoch 65535"), "{why}");
        assert!(why.contains("starts writeback epoch 0"), "{why}");
        assert!(why.contains("(epoch 0)"), "{why}");
        let text = render_events(&events, l, &|r| r);
        assert!(text.contains("waker-epoch=65535"), "{text}");
    }

    /// The waker's own wake record may come between the waiter's stale wake and its end of
    /// wait; the roles are read off all the same. A stale wake followed by another event of
    /// the waiter before the end is not the one that ended the wait.
    #[test]
    fn stale_wake_roles_are_found_with_the_wakers_record_in_between() {
        let l = &LAYOUT_CLASSIC;
        let wb = l.mask(PG::Writeback);
        let wbit = l.bit(PG::Writeback);
        let (old, new) = (1u64, 2u64);
        for waiter_between in [false, true] {
            let h = History::default();
            let count = AtomicU32::new(0);
            let ev = |seq, op, bit, before, after, arg, thread| {
                put_at_seq(&h, &count, seq, (op, bit), before, after, arg, thread);
            };
            let (w, n) = (wb | new << 32, new << 32);
            ev(1, Op::ClearWriteback, 0, wb | old << 32, old << 32, 0, 2);
            ev(2, Op::SetWriteback, 0, old << 32, w, new as u32, 4);
            ev(3, Op::WaitStart, wbit, w, w, 0, 3);
            ev(4, Op::StaleWake, wbit, w, w, old as u32, 3);
            ev(5, Op::Wake, wbit, w, w, 1, 2);
            if waiter_between {
                ev(6, Op::Lock, 0, w, w, 0, 3);
            } else {
                ev(6, Op::SetDirty, 0, n, n, 0, 4);
            }
            ev(7, Op::WaitEnd, wbit, w, w, 2, 3);
            let events = events_at(&h, &count, NOW);
            let why = explain_stale_wake(&events, 3, wbit, &|r| r);
            if waiter_between {
                assert!(why.is_none(), "{why:?}");
            } else {
                let why = why.expect("the roles are found");
                assert!(why.contains("ends writeback epoch 1"), "{why}");
                assert!(why.contains("starts writeback epoch 2"), "{why}");
            }
        }
    }

    /// One writer records events whose every field is a function of their number while two
    /// readers read the ring: every event read must be whole (each field what its number
    /// says), numbered at most the count read afterwards, and the events in order.
    #[test]
    fn readers_racing_a_writer_never_see_a_torn_event() {
        const EVENTS: u32 = 200_000;
        let l = &LAYOUT_CLASSIC;
        let all: Vec<u64> = ALL_FLAGS.iter().map(|f| l.mask(*f)).collect();
        let flags_of = |bits: u32| -> u64 {
            (0..all.len())
                .filter(|i| bits >> i & 1 != 0)
                .map(|i| all[i])
                .sum()
        };
        let ops: Vec<Op> = (1..=18).filter_map(Op::from_u8).collect();
        assert_eq!(ops.len(), 18);
        let rec_of = |s: u32| -> (Rec, u32, u64) {
            let epoch = u64::from(s.wrapping_mul(7)) << 32;
            let rec = Rec {
                op: ops[s as usize % ops.len()],
                bit: (s % 19) as u8,
                before: flags_of(s % 512) | epoch,
                after: flags_of((s / 3) % 512) | epoch,
                arg: s.wrapping_mul(40503),
            };
            (
                rec,
                s.wrapping_mul(2_654_435_761),
                u64::from(s) * 1000 + 123,
            )
        };
        let h = History::default();
        let count = AtomicU32::new(0);
        let pack = classic();
        let done = std::sync::atomic::AtomicBool::new(false);
        let reads = std::thread::scope(|sc| {
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    sc.spawn(|| {
                        let mut reads = 0u64;
                        loop {
                            let finished = done.load(Ordering::Acquire);
                            let before = count.load(Ordering::Acquire);
                            let now = || u64::from(count.load(Ordering::Relaxed)) * 1000 + 123;
                            let ev = h.events(&pack, &count, &now);
                            let after = count.load(Ordering::Relaxed);
                            assert!(ev.len() <= HISTORY_LEN);
                            assert!(ev.windows(2).all(|w| w[0].seq < w[1].seq), "{ev:?}");
                            for e in &ev {
                                assert!(e.seq >= 1 && e.seq <= after, "{e:?} count {after}");
                                assert!(
                                    e.seq + 2 * HISTORY_LEN as u32 > before,
                                    "{e:?} count {before}"
                                );
                                let (rec, thread, t) = rec_of(e.seq);
                                let want_arg = rec.arg & (ARG_MASK as u32);
                                let want_arg = match rec.op {
                                    Op::SetWriteback | Op::StaleWake | Op::WaitEnd => {
                                        want_arg & 0xffff
                                    }
                                    _ => want_arg,
                                };
                                assert_eq!(
                                    (e.op, e.bit, e.thread, e.arg, e.t_raw),
                                    (rec.op, rec.bit, thread as u16, want_arg, t & !15),
                                    "{e:?}"
                                );
                                assert_eq!(
                                    (u64::from(e.before), u64::from(e.after)),
                                    (rec.before & PG_BITS, rec.after & PG_BITS),
                                    "{e:?}"
                                );
                                assert_eq!(e.epoch, (rec.before >> 32) as u16, "{e:?}");
                            }
                            reads += 1;
                            if finished {
                                assert_eq!(ev.len(), HISTORY_LEN);
                                assert_eq!(ev[HISTORY_LEN - 1].seq, EVENTS);
                                return reads;
                            }
                        }
                    })
                })
                .collect();
            for _ in 0..EVENTS {
                // AcqRel: a reader that sees this count sees the slots written before it, so its
                // lower bound on the numbers it reads holds on any memory model.
                let s = count.fetch_add(1, Ordering::AcqRel) + 1;
                let (rec, thread, t) = rec_of(s);
                h.record(s, rec, thread, t);
            }
            done.store(true, Ordering::Release);
            readers
                .into_iter()
                .map(|r| r.join().expect("reader"))
                .sum::<u64>()
        });
        assert!(reads >= 2);
    }
}
