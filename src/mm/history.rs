//! Per-frame event history: the last [`HISTORY_LEN`] things that happened to a frame.
//!
//! Model-only (the kernel has nothing like it). A BUG report prints this ring so the interleaving
//! that led to the failure can be read off it: which thread cleared PG_writeback, which started
//! the next writeback, which slept, which thread's wake ended the sleep, and with which epoch.
//!
//! The ring is lock-free and invisible to the model checker (`sync::unchecked`): recording an
//! event must not add schedule points to the protocol, nor cost a lock on the lock_page path.
//! Each slot is four words; the header word doubles as a sequence lock (0 while being written),
//! so a reader racing a writer sees a slot either whole or not at all.

use std::fmt::Write as _;

use crate::mm::flags::{FlagLayout, PG_BITS, epoch_of};
use crate::sync::thread_name;
use crate::sync::unchecked::{AtomicU64, Ordering};

/// Events kept per frame.
pub const HISTORY_LEN: usize = 32;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Frame handed out by the allocator (arg: generation).
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
    /// PG_writeback set (epoch: the new writeback).
    SetWriteback,
    /// PG_writeback cleared (epoch: the writeback that ended).
    ClearWriteback,
    /// A waker walked the bucket for this frame (arg: entries woken).
    Wake,
    /// This thread's wait on a bit started (bit: which; epoch: the writeback it waits for).
    WaitStart,
    /// This thread's wait ended (arg: the thread that woke it, 0 if none; epoch: of the waker).
    WaitEnd,
    /// A wait ended by a wake from an older writeback epoch (arg: waker's epoch).
    StaleWake,
    /// The waker refused to wake (bit set again; E0 / ALT-B).
    WakeRefused,
    /// The frame was reclaimed.
    Reclaim,
    /// A BUG or VM_BUG fired on this frame.
    Bug,
}

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
}

/// One recorded event, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Per-frame sequence number (1 = first event ever on this frame).
    pub seq: u32,
    /// Thread tag (see `sync::thread_tag`).
    pub thread: u16,
    /// What happened.
    pub op: Op,
    /// Bit involved (waits), or 0.
    pub bit: u8,
    /// Raw timestamp (the cache converts it to nanoseconds).
    pub t_raw: u64,
    /// PG bits before.
    pub before: u32,
    /// PG bits after.
    pub after: u32,
    /// Writeback epoch the event belongs to.
    pub epoch: u32,
    /// Op-specific argument.
    pub arg: u32,
}

#[derive(Debug, Default)]
struct Slot {
    header: AtomicU64,
    t_raw: AtomicU64,
    flags: AtomicU64,
    epoch_arg: AtomicU64,
}

/// The ring of one frame.
#[derive(Debug, Default)]
pub struct History {
    slots: [Slot; HISTORY_LEN],
}

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

impl History {
    /// Append event number `seq` of this frame (overwriting the oldest).
    ///
    /// The caller numbers events from a counter kept in the frame, not here: the frame's cache
    /// line was just written by the flag operation being recorded, while a ring is usually
    /// cold (17 MiB of them at 64 MiB of cache), and a locked increment of a cold line stalls
    /// for the whole miss where the plain stores below retire through the store buffer. That
    /// was a quarter of the user CPU of a sequential read.
    pub fn record(&self, seq: u32, rec: Rec, thread: u32, t_raw: u64) {
        let slot = &self.slots[(seq as usize) % HISTORY_LEN];
        slot.header.store(0, Ordering::Relaxed);
        // Release fence: pairs with the reader's Acquire fence in `events`. A reader whose
        // field loads see any of the stores below then sees this 0 (or a later header) on its
        // re-read, so it cannot take new fields for the old header's event (the seqlock's
        // write side; without the fence the field stores could become visible before the 0).
        std::sync::atomic::fence(Ordering::Release);
        slot.t_raw.store(t_raw, Ordering::Relaxed);
        slot.flags.store(
            (rec.before & PG_BITS) | (rec.after << 32),
            Ordering::Relaxed,
        );
        let epoch = epoch_of(rec.after).max(epoch_of(rec.before));
        slot.epoch_arg.store(
            u64::from(epoch) | (u64::from(rec.arg) << 32),
            Ordering::Relaxed,
        );
        let header = u64::from(seq)
            | (u64::from(thread & 0xffff) << 32)
            | ((rec.op as u64) << 48)
            | (u64::from(rec.bit) << 56);
        // Release: pairs with the Acquire in `events`; a reader that sees this header sees the
        // fields stored above.
        slot.header.store(header, Ordering::Release);
    }

    /// The recorded events, oldest first; slots being rewritten right now are left out.
    pub fn events(&self) -> Vec<Event> {
        let mut out = Vec::with_capacity(HISTORY_LEN);
        for slot in &self.slots {
            let h1 = slot.header.load(Ordering::Acquire);
            if h1 == 0 {
                continue;
            }
            let t_raw = slot.t_raw.load(Ordering::Relaxed);
            let flags = slot.flags.load(Ordering::Relaxed);
            let ea = slot.epoch_arg.load(Ordering::Relaxed);
            // Acquire fence: the field loads above cannot move after the re-read below, and
            // with the writer's Release fence, a header unchanged across the two reads means
            // no writer's field stores were seen, so the fields belong to that header.
            std::sync::atomic::fence(Ordering::Acquire);
            if slot.header.load(Ordering::Relaxed) != h1 {
                continue;
            }
            let Some(op) = Op::from_u8((h1 >> 48) as u8) else {
                continue;
            };
            out.push(Event {
                seq: h1 as u32,
                thread: (h1 >> 32) as u16,
                op,
                bit: (h1 >> 56) as u8,
                t_raw,
                before: flags as u32,
                after: (flags >> 32) as u32,
                epoch: ea as u32,
                arg: (ea >> 32) as u32,
            });
        }
        out.sort_by_key(|e| e.seq);
        out
    }

    /// The events as report lines; `to_ns` turns a raw timestamp into nanoseconds.
    pub fn render(&self, layout: &FlagLayout, to_ns: &dyn Fn(u64) -> u64) -> String {
        render_events(&self.events(), layout, to_ns)
    }
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
    let stale = events[..end]
        .iter()
        .rposition(|e| is(e, Op::StaleWake))
        .filter(|&i| end - i <= 1)?;
    let old_epoch = events[stale].arg;
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
    use crate::mm::flags::{LAYOUT_CLASSIC, PG};

    #[test]
    fn ring_keeps_the_last_events_in_order() {
        let h = History::default();
        let l = &LAYOUT_CLASSIC;
        for i in 0..(HISTORY_LEN as u32 + 5) {
            let rec = Rec {
                op: Op::Lock,
                bit: 0,
                before: 0,
                after: l.mask(PG::Locked),
                arg: i,
            };
            h.record(i + 1, rec, 3, u64::from(i));
        }
        let ev = h.events();
        assert_eq!(ev.len(), HISTORY_LEN);
        assert_eq!(ev[0].seq, 6);
        assert_eq!(ev[0].arg, 5);
        assert!(ev.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(ev[0].after, l.mask(PG::Locked) as u32);
    }

    #[test]
    fn render_names_ops_flags_and_epochs() {
        let h = History::default();
        let l = &LAYOUT_CLASSIC;
        let wb = l.mask(PG::Writeback) | (2u64 << 32);
        h.record(
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
        let text = h.render(l, &|r| r);
        assert!(text.contains("set_page_writeback"), "{text}");
        assert!(text.contains("epoch=2"), "{text}");
        assert!(text.contains("none -> writeback"), "{text}");
    }
}
