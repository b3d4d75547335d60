//! Kernel eras: which version of the wait/wake and writeback-end protocol the cache follows.
//!
//! An era is a handful of switches, not a copy of the code (SEMANTICS 7). It is chosen when the
//! cache is built and never changes afterwards, so every frame and every waiter agree on it.
//!
//! | name | kernel | waiter after a wake | wait_on_page_writeback | end_page_writeback |
//! |---|---|---|---|---|
//! | `v5.8` | up to 5.8 | re-tests, loops (E0) | `if` | no frame ref |
//! | `v5.9` | 5.9 .. 5.10-rc5 | woken means done (E1) | `if` | no frame ref |
//! | `v5.10` | 5.10-rc6 .. 5.11-rc2 | woken means done | `if` | ref across clear+wake (073861ed77b6) |
//! | `v5.11` | 5.11 .. 6.6 | woken means done | `while` (c2407cf7d22d) | ref |
//! | `v6.9` | 6.7/6.9 .. | woken means done | `while` | ref; one XOR clears and reads waiters |
//! | `alt-a` | never merged | woken means done | `if` | clear and wake under the bucket lock |
//! | `alt-b` | never merged | waker refuses if bit set | `if` | ref |

use std::fmt;
use std::str::FromStr;

use crate::error::FsError;
use crate::mm::flags::{FlagLayout, LAYOUT_CLASSIC, LAYOUT_MODERN};

/// A selectable kernel era.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Era {
    /// E0: up to v5.8, the looping wait.
    V5_8,
    /// E1: v5.9 .. v5.10-rc5, the rewrite (2a9127fcf229) with the unfairness budget.
    V5_9,
    /// E2: v5.10-rc6 .. v5.11-rc2, frame pinned across clear and wake (073861ed77b6).
    V5_10,
    /// E3: v5.11 .. v6.6, `while` in wait_on_page_writeback (c2407cf7d22d).
    V5_11,
    /// E4: v6.9 and later, XOR end of writeback, no wait-queue bookmarks.
    V6_9,
    /// Linus's never-merged proposal: clear PG_writeback inside the wake, under the bucket lock.
    AltA,
    /// Linus's never-merged test patch: the wake function refuses every waiter while the bit is set.
    AltB,
}

/// Every era, in history order.
pub const ALL_ERAS: [Era; 7] = [
    Era::V5_8,
    Era::V5_9,
    Era::V5_10,
    Era::V5_11,
    Era::V6_9,
    Era::AltA,
    Era::AltB,
];

/// How a waiter behaves once it has been woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaiterKind {
    /// E0: re-test the bit, re-queue at the tail if it is still set (the "hidden loop").
    Looping,
    /// E1+: WQ_FLAG_WOKEN ends the wait; only exclusive waiters try the bit again.
    WokenMeansDone,
}

/// What the wake function does with an entry whose frame and bit match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeKind {
    /// E0: if the bit is set again, stop walking and wake nobody; else wake and unlink.
    RefuseIfSet,
    /// E1+: shared waiters are woken without looking at the bit; exclusive ones stop the walk
    /// if the bit is held, or get it handed over when they asked (CUSTOM).
    SharedBlind,
    /// ALT-B: like `SharedBlind` but the "bit set: stop walking" test applies to every waiter.
    RefuseAllIfSet,
}

/// `if` or `while` around the writeback wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritebackWait {
    /// Wait once (up to 5.10, ALT-A, ALT-B).
    If,
    /// Wait until the bit is observed clear (c2407cf7d22d and later).
    While,
}

/// The shape of end_page_writeback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndWriteback {
    /// E0/E1: clear, barrier, wake; no reference on the frame.
    NoRef,
    /// E2/E3: get_page, clear, barrier, wake, put_page.
    Ref,
    /// E4: get, one XOR that clears PG_writeback and returns PG_waiters, wake only if set, put.
    Xor,
    /// ALT-A: get; CAS-clear if no waiters, else clear and wake inside the bucket lock; put.
    ClearUnderLock,
}

/// The switches one era sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EraSwitches {
    /// Waiter loop body.
    pub waiter: WaiterKind,
    /// Wake function body.
    pub wake: WakeKind,
    /// `if` or `while` in wait_on_page_writeback.
    pub wb_wait: WritebackWait,
    /// end_page_writeback shape.
    pub end_wb: EndWriteback,
    /// Wait-queue walk bookmarks (break the walk after 64 entries), present up to v6.1.
    pub bookmarks: bool,
    /// Failed lock attempts before a waiter asks for hand-off (`vm.page_lock_unfairness`);
    /// `None` means no hand-off at all (E0).
    pub unfairness: Option<u32>,
    /// page-flags.h bit positions.
    pub layout: &'static FlagLayout,
    /// unlock_page uses the XOR form (E4).
    pub xor_unlock: bool,
}

impl Era {
    /// The mount-option name (`era=v5.10`).
    pub fn name(self) -> &'static str {
        match self {
            Era::V5_8 => "v5.8",
            Era::V5_9 => "v5.9",
            Era::V5_10 => "v5.10",
            Era::V5_11 => "v5.11",
            Era::V6_9 => "v6.9",
            Era::AltA => "alt-a",
            Era::AltB => "alt-b",
        }
    }

    /// Kernel history: does this era have the write_cache_pages BUG of January 2021 (S1)?
    pub fn has_s1_bug(self) -> bool {
        matches!(self, Era::V5_9 | Era::V5_10)
    }

    /// Kernel history: can a stale wake reach a reused frame's waiter (S2, Hugh's variant)?
    pub fn has_s2_bug(self) -> bool {
        matches!(self, Era::V5_9)
    }

    /// One line on where the era comes from.
    pub fn describe(self) -> &'static str {
        match self {
            Era::V5_8 => "up to v5.8: waiters loop, wake refused while the bit is set",
            Era::V5_9 => "v5.9..v5.10-rc5: woken means done, end_page_writeback holds no ref",
            Era::V5_10 => "v5.10-rc6..v5.11-rc2 (syzbot's kernel): ref held across clear+wake",
            Era::V5_11 => "v5.11..v6.6: wait_on_page_writeback loops (c2407cf7d22d)",
            Era::V6_9 => "v6.9..today: XOR clears writeback and reads waiters at once",
            Era::AltA => "never merged: clear PG_writeback inside the wake, under the bucket lock",
            Era::AltB => "never merged: wake function refuses every waiter while the bit is set",
        }
    }

    /// The switches of this era.
    pub fn switches(self) -> EraSwitches {
        let e1 = EraSwitches {
            waiter: WaiterKind::WokenMeansDone,
            wake: WakeKind::SharedBlind,
            wb_wait: WritebackWait::If,
            end_wb: EndWriteback::NoRef,
            bookmarks: true,
            unfairness: Some(5),
            layout: &LAYOUT_CLASSIC,
            xor_unlock: false,
        };
        match self {
            Era::V5_8 => EraSwitches {
                waiter: WaiterKind::Looping,
                wake: WakeKind::RefuseIfSet,
                unfairness: None,
                ..e1
            },
            Era::V5_9 => e1,
            Era::V5_10 => EraSwitches {
                end_wb: EndWriteback::Ref,
                ..e1
            },
            Era::V5_11 => EraSwitches {
                end_wb: EndWriteback::Ref,
                wb_wait: WritebackWait::While,
                ..e1
            },
            Era::V6_9 => EraSwitches {
                end_wb: EndWriteback::Xor,
                wb_wait: WritebackWait::While,
                bookmarks: false,
                layout: &LAYOUT_MODERN,
                xor_unlock: true,
                ..e1
            },
            // No bookmarks: dropping the bucket lock mid-walk is exactly Hugh's objection to clearing
            // inside the wake (SEMANTICS 1.6).
            Era::AltA => EraSwitches {
                end_wb: EndWriteback::ClearUnderLock,
                bookmarks: false,
                ..e1
            },
            Era::AltB => EraSwitches {
                end_wb: EndWriteback::Ref,
                wake: WakeKind::RefuseAllIfSet,
                ..e1
            },
        }
    }
}

impl fmt::Display for Era {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Era {
    type Err = FsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_ERAS
            .iter()
            .copied()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                log::error!(
                    "unknown era {s:?}; known eras: {}",
                    ALL_ERAS
                        .iter()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                FsError::Invalid("unknown era (one of v5.8 v5.9 v5.10 v5.11 v6.9 alt-a alt-b)")
            })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in ALL_ERAS {
            assert_eq!(e.name().parse::<Era>().expect("known"), e);
        }
        let err = "v4.19"
            .parse::<Era>()
            .expect_err("unknown era must be refused");
        assert!(err.to_string().contains("unknown era"));
    }

    #[test]
    fn switches_match_the_design_table() {
        use EndWriteback as E;
        use WritebackWait as W;
        let rows = [
            (Era::V5_8, WaiterKind::Looping, W::If, E::NoRef),
            (Era::V5_9, WaiterKind::WokenMeansDone, W::If, E::NoRef),
            (Era::V5_10, WaiterKind::WokenMeansDone, W::If, E::Ref),
            (Era::V5_11, WaiterKind::WokenMeansDone, W::While, E::Ref),
            (Era::V6_9, WaiterKind::WokenMeansDone, W::While, E::Xor),
            (
                Era::AltA,
                WaiterKind::WokenMeansDone,
                W::If,
                E::ClearUnderLock,
            ),
            (Era::AltB, WaiterKind::WokenMeansDone, W::If, E::Ref),
        ];
        for (era, waiter, wait, end) in rows {
            let s = era.switches();
            assert_eq!(
                (s.waiter, s.wb_wait, s.end_wb),
                (waiter, wait, end),
                "{era}"
            );
        }
        assert_eq!(Era::AltB.switches().wake, WakeKind::RefuseAllIfSet);
        assert_eq!(Era::V5_8.switches().wake, WakeKind::RefuseIfSet);
        assert!(!Era::V6_9.switches().bookmarks);
    }
}
