//! Assertions in the kernel's three tiers, and the reports they print.
//!
//! | macro | kernel | compiled | on failure |
//! |---|---|---|---|
//! | [`bug_on!`](crate::bug_on) | BUG_ON / BUG | always | report, then the [`OnBug`] policy |
//! | [`vm_bug_on_page!`](crate::vm_bug_on_page) | VM_BUG_ON_PAGE | debug builds, feature `debug_vm` | same |
//! | [`warn_on_once!`](crate::warn_on_once) | WARN_ON_ONCE | always | report once per site, carry on |
//!
//! `bug_on!` stands only where the modelled kernel has a BUG_ON (SEMANTICS section 6). Each macro
//! evaluates to the condition, so under `on_bug=warn` the caller can recover and carry on.
//!
//! A report reads like the kernel's (`BUG at src/mm/writeback.rs:LINE!`, the condition, the page
//! dump, the thread, a backtrace) and adds what the kernel cannot give: the recent history of the
//! frame, supplied by the [`Dump`] implementation of whoever owns the object (the page cache).
//! This module imports nothing else from the crate, so every layer can use it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;

use crate::error::FsError;
use crate::sync::unchecked::{AtomicU64, Mutex, Ordering};
use crate::sync::{thread_name, thread_tag};

/// What to do after a BUG has been reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBug {
    /// Print, run the before-abort hook (mark the volume dirty), abort the process
    /// (like panic_on_oops). The default.
    Abort,
    /// Print, count per site, and carry on (the caller recovers); for measuring hit rates.
    Warn,
    /// Print and panic the calling thread (like an oops killing the task); for tests and loom.
    Panic,
}

impl FromStr for OnBug {
    type Err = FsError;

    fn from_str(s: &str) -> Result<Self, FsError> {
        match s {
            "abort" => Ok(OnBug::Abort),
            "warn" => Ok(OnBug::Warn),
            "panic" => Ok(OnBug::Panic),
            _ => {
                log::error!("unknown on_bug policy {s:?}: expected abort, warn or panic");
                Err(FsError::Invalid("on_bug must be abort, warn or panic"))
            }
        }
    }
}

/// Which tier an assertion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// BUG_ON / BUG.
    Bug,
    /// VM_BUG_ON_PAGE.
    VmBug,
    /// WARN_ON_ONCE.
    Warn,
}

/// A static description of one assertion site, built by the macros.
#[derive(Debug)]
pub struct Site {
    /// Source file, as `file!()` gives it.
    pub file: &'static str,
    /// Source line.
    pub line: u32,
    /// The asserted condition, as written.
    pub cond: &'static str,
    /// The tier.
    pub tier: Tier,
}

impl Site {
    /// `src/mm/writeback.rs:123`, the key counters use.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// Something that can describe itself in a report: a page dump plus its history.
pub trait Dump {
    /// The multi-line dump (state first, then history).
    fn dump(&self) -> String;
}

/// Full reports printed per site before the reporter switches to one-line summaries.
const FULL_REPORTS_PER_SITE: u64 = 3;

/// Counts, prints and acts on failed assertions for one page cache (one mount).
pub struct BugReporter {
    policy: OnBug,
    hits: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    last: Mutex<Option<String>>,
    warned: Mutex<std::collections::HashSet<usize>>,
    before_abort: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// When the reporter (the mount) started: reports are stamped with the time since, as
    /// the kernel stamps its log with the time since boot.
    started: std::time::Instant,
}

impl std::fmt::Debug for BugReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BugReporter")
            .field("policy", &self.policy)
            .field("total", &self.total.load(Ordering::Relaxed))
            .finish()
    }
}

impl BugReporter {
    /// A reporter with the given policy and no hits.
    pub fn new(policy: OnBug) -> Self {
        BugReporter {
            policy,
            hits: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
            last: Mutex::new(None),
            warned: Mutex::new(std::collections::HashSet::new()),
            before_abort: Mutex::new(None),
            started: std::time::Instant::now(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> OnBug {
        self.policy
    }

    /// Install what runs after the report and before `abort()` (the fs marks the volume dirty).
    pub fn set_before_abort(&self, f: Box<dyn Fn() + Send + Sync>) {
        *self.before_abort.lock() = Some(f);
    }

    /// Failed assertions so far, per site (`file:line`), BUG and VM_BUG tiers only.
    pub fn hits(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .hits
            .lock()
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// Hits at sites whose file ends with `file` and whose condition contains `cond`.
    pub fn hits_matching(&self, file: &str, cond: &str) -> u64 {
        self.hits
            .lock()
            .iter()
            .filter(|(k, _)| {
                let mut parts = k.splitn(3, ':');
                let f = parts.next().unwrap_or("");
                let _line = parts.next();
                let c = parts.next().unwrap_or("");
                f.ends_with(file) && c.contains(cond)
            })
            .map(|(_, n)| *n)
            .sum()
    }

    /// All BUG and VM_BUG hits.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The most recent report, if any: the page, its history and the interleaving always;
    /// the backtrace only for the first [`FULL_REPORTS_PER_SITE`] hits of a site under
    /// `on_bug=warn` (capturing one costs milliseconds, and a racy era hits often).
    pub fn last_report(&self) -> Option<String> {
        self.last.lock().clone()
    }

    /// Called by the macros when an assertion fails. Returns only under policies that carry on.
    pub fn fire(&self, site: &'static Site, dump: Option<&dyn Dump>) {
        if site.tier == Tier::Warn {
            // WARN_ON_ONCE, once per site and reporter (one mount, one era): a process that
            // runs several caches reports each one's first warning. Always carries on.
            if !self.warned.lock().insert(std::ptr::from_ref(site) as usize) {
                return;
            }
            let report = self.format(site, dump, true);
            emit(&report);
            log::warn!("WARNING at {}: {}", site.location(), site.cond);
            return;
        }
        let n = {
            let mut hits = self.hits.lock();
            let key = format!("{}:{}", site.location(), site.cond);
            let n = hits.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        let full = n <= FULL_REPORTS_PER_SITE || self.policy != OnBug::Warn;
        let report = self.format(site, dump, full);
        *self.last.lock() = Some(report.clone());
        match self.policy {
            OnBug::Warn => {
                if full {
                    emit(&report);
                } else if n.is_power_of_two() {
                    emit(&format!(
                        "BUG at {}! ({}) hit {n} times so far\n",
                        site.location(),
                        site.cond
                    ));
                }
            }
            OnBug::Panic => panic!("{report}"),
            OnBug::Abort => {
                emit(&report);
                if let Some(f) = self.before_abort.lock().as_ref() {
                    f();
                }
                emit("fatcache: on_bug=abort: aborting\n");
                std::process::abort();
            }
        }
    }

    fn format(&self, site: &Site, dump: Option<&dyn Dump>, backtrace: bool) -> String {
        let mut s = String::new();
        let head = match site.tier {
            Tier::Bug => "BUG",
            Tier::VmBug => "BUG (VM_BUG_ON_PAGE)",
            Tier::Warn => "WARNING",
        };
        let _ = writeln!(
            s,
            "[{:>12.6}] ------------[ cut here ]------------",
            self.started.elapsed().as_secs_f64()
        );
        let _ = writeln!(s, "{head} at {}:{}!", site.file, site.line);
        let _ = writeln!(s, "condition: {}", site.cond);
        let _ = writeln!(s, "thread: {}", thread_name(thread_tag()));
        if let Some(d) = dump {
            s.push_str(&d.dump());
        }
        if backtrace {
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            let _ = writeln!(s, "backtrace:\n{}", trim_backtrace(&bt, site));
        }
        let _ = writeln!(s, "---[ end trace ]---");
        s
    }
}

/// The reporter's own functions: frames that name them are dropped from the top of a report's
/// backtrace. Release builds (`debug = "line-tables-only"`) print bare function names, so the
/// names are matched too, not only the `fatcache::bug::` path.
const REPORTER_FRAMES: [&str; 3] = ["format", "fire", "emit"];

/// Drops the reporter's own frames from the top of a backtrace, so it starts at the function
/// that asserted (as the kernel's starts at the BUG site), and points that frame's location,
/// which the assertion macro attributes to this file, at the assertion `site` itself.
fn trim_backtrace(bt: &str, site: &Site) -> String {
    // Frames: a "N: name" line followed by "at file:line" lines.
    let mut frames: Vec<(String, Vec<String>)> = Vec::new();
    for line in bt.lines() {
        let t = line.trim_start();
        let numbered = t
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        match frames.last_mut() {
            Some((_, at)) if !numbered => at.push(line.to_owned()),
            _ => frames.push((line.to_owned(), Vec::new())),
        }
    }
    let ours = |name: &str| {
        let name = name.trim_start();
        let name = name.split_once(": ").map_or(name, |(_, n)| n).trim();
        name.contains("fatcache::bug::")
            || name.contains("std::backtrace")
            || REPORTER_FRAMES.contains(&name)
    };
    let skip = frames.iter().take_while(|(name, _)| ours(name)).count();
    let here = format!("/src/{}", file!().rsplit('/').next().unwrap_or("bug.rs"));
    let mut out = String::new();
    for (k, (name, at)) in frames.iter().skip(skip).enumerate() {
        out.push_str(name);
        out.push('\n');
        for a in at {
            if k == 0 && a.contains(&here) {
                let indent = &a[..a.len() - a.trim_start().len()];
                out.push_str(&format!("{indent}at {}:{}\n", site.file, site.line));
            } else {
                out.push_str(a);
                out.push('\n');
            }
        }
    }
    out
}

/// `BUG_ON(cond)`: always checked. Evaluates to the condition.
///
/// `bug_on!(reporter, cond)` or `bug_on!(reporter, cond, dump)` where `dump: &dyn Dump`.
#[macro_export]
macro_rules! bug_on {
    ($rep:expr, $cond:expr) => {
        $crate::__assert_site!($crate::bug::Tier::Bug, $rep, $cond, None)
    };
    ($rep:expr, $cond:expr, $dump:expr) => {
        $crate::__assert_site!($crate::bug::Tier::Bug, $rep, $cond, Some($dump))
    };
}

/// `VM_BUG_ON_PAGE(cond, page)`: checked in debug builds and with feature `debug_vm`; otherwise
/// still type-checked but never evaluated (like BUILD_BUG_ON_INVALID).
#[macro_export]
macro_rules! vm_bug_on_page {
    ($rep:expr, $cond:expr, $dump:expr) => {
        $crate::__assert_site!(
            $crate::bug::Tier::VmBug,
            $rep,
            $crate::bug::debug_vm() && ($cond),
            Some($dump),
            stringify!($cond)
        )
    };
}

/// `WARN_ON_ONCE(cond)`: reports the first failure at this site, always evaluates to `cond`.
#[macro_export]
macro_rules! warn_on_once {
    ($rep:expr, $cond:expr) => {
        $crate::__warn_once!($rep, $cond, None)
    };
    ($rep:expr, $cond:expr, $dump:expr) => {
        $crate::__warn_once!($rep, $cond, Some($dump))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __warn_once {
    ($rep:expr, $cond:expr, $dump:expr) => {{
        let c: bool = $cond;
        if c {
            static SITE: $crate::bug::Site = $crate::bug::Site {
                file: file!(),
                line: line!(),
                cond: stringify!($cond),
                tier: $crate::bug::Tier::Warn,
            };
            let d: Option<&dyn $crate::bug::Dump> = $dump;
            $rep.fire(&SITE, d);
        }
        c
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __assert_site {
    ($tier:expr, $rep:expr, $cond:expr, $dump:expr) => {
        $crate::__assert_site!($tier, $rep, $cond, $dump, stringify!($cond))
    };
    // `text` is the condition as written at the call site (without the debug_vm() gate).
    ($tier:expr, $rep:expr, $cond:expr, $dump:expr, $text:expr) => {{
        let c: bool = $cond;
        if c {
            static SITE: $crate::bug::Site = $crate::bug::Site {
                file: file!(),
                line: line!(),
                cond: $text,
                tier: $tier,
            };
            let d: Option<&dyn $crate::bug::Dump> = $dump;
            $rep.fire(&SITE, d);
        }
        c
    }};
}

/// Whether VM_BUG_ON-tier checks are live in this build.
#[inline(always)]
pub const fn debug_vm() -> bool {
    cfg!(any(debug_assertions, feature = "debug_vm"))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct D;
    impl Dump for D {
        fn dump(&self) -> String {
            "page: frame 7\n".to_string()
        }
    }

    #[test]
    fn warn_policy_counts_per_site_and_carries_on() {
        let r = BugReporter::new(OnBug::Warn);
        for i in 0..5 {
            assert_eq!(crate::bug_on!(r, i % 2 == 0, &D), i % 2 == 0);
        }
        assert!(!crate::bug_on!(r, false));
        assert_eq!(r.total(), 3);
        assert_eq!(r.hits_matching("bug.rs", "i % 2 == 0"), 3);
        let last = r.last_report().expect("a report");
        assert!(last.contains("BUG at src/bug.rs:"), "{last}");
        assert!(last.contains("condition: i % 2 == 0"));
        assert!(last.contains("page: frame 7"));
    }

    #[test]
    fn panic_policy_panics_with_the_report() {
        let r = BugReporter::new(OnBug::Panic);
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::bug_on!(r, 1 + 1 == 2, &D);
        }))
        .expect_err("must panic");
        let msg = err.downcast_ref::<String>().expect("string payload");
        assert!(msg.contains("condition: 1 + 1 == 2"));
    }

    #[test]
    fn vm_bug_follows_the_build() {
        let r = BugReporter::new(OnBug::Warn);
        let fired = crate::vm_bug_on_page!(r, true, &D);
        assert_eq!(fired, debug_vm());
        assert_eq!(r.total(), u64::from(debug_vm()));
    }

    #[test]
    fn warn_on_once_reports_once_but_returns_every_time() {
        let r = BugReporter::new(OnBug::Abort);
        let mut n = 0;
        for _ in 0..3 {
            if crate::warn_on_once!(r, true) {
                n += 1;
            }
        }
        assert_eq!(n, 3);
        // WARN tier is never counted as a BUG and never aborts.
        assert_eq!(r.total(), 0);
    }

    #[test]
    fn policy_parses() {
        assert_eq!("warn".parse::<OnBug>().expect("ok"), OnBug::Warn);
        assert!("explode".parse::<OnBug>().is_err());
    }
}

/// Writes a report to stderr in one piece, ignoring failure: a daemon's stderr may be a
/// pipe nobody reads any more, and `eprint!` would panic the reporting thread on EPIPE.
fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
