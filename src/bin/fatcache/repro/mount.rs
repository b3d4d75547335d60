//! The mount of one era: a `fatcache mount -f` child with its standard error in a log file,
//! waited for in /proc/self/mountinfo, and always taken down again (unmount and wait, or on
//! any other way out SIGTERM, kill and a lazy detach).

use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Failure;

/// Longest wait for the mount to appear.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

/// Longest wait for the daemon to exit after the unmount (it writes everything back first).
const EXIT_WAIT: Duration = Duration::from_secs(60);

/// How long a daemon taken down on an error or a signal gets to write back and exit before it
/// is killed.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// Lines of the daemon log shown when a mount fails.
const LOG_TAIL: usize = 20;

/// The last [`LOG_TAIL`] lines of a daemon log.
pub(super) fn log_tail(log: &Path) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            if tail.is_empty() {
                "(the log is empty)".to_owned()
            } else {
                tail.join("\n")
            }
        }
        Err(e) => format!("(no log {}: {e})", log.display()),
    }
}

/// A `fatcache mount -f` child serving one era's mount. Dropping it without
/// [`Mount::finish`] stops the daemon (SIGTERM, then SIGKILL) and detaches what it leaves.
pub(super) struct Mount {
    /// The mount point.
    pub(super) dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mount {
    /// Starts the daemon and waits until its mount is in /proc/self/mountinfo.
    pub(super) fn start(
        image: &Path,
        dir: &Path,
        options: &str,
        log: &Path,
        interrupted: &AtomicBool,
    ) -> Result<Mount, Failure> {
        let exe = std::env::current_exe()
            .map_err(|e| Failure::Setup(format!("cannot find this program: {e}")))?;
        let log_file = File::create(log)
            .map_err(|e| Failure::Setup(format!("cannot create {}: {e}", log.display())))?;
        // Its own process group: a Ctrl-C on the terminal reaches only us, and we take the
        // mount down in order (stop the workload, clean up, unmount) instead of the daemon
        // leaving under the workload's feet.
        let child = Command::new(exe)
            .arg("mount")
            .arg(image)
            .arg(dir)
            .args(["-f", "-o", options])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .process_group(0)
            .spawn()
            .map_err(|e| Failure::Setup(format!("cannot start fatcache mount: {e}")))?;
        let mut mount = Mount {
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
            child: Some(child),
        };
        mount.wait_mounted(interrupted)?;
        Ok(mount)
    }

    fn wait_mounted(&mut self, interrupted: &AtomicBool) -> Result<(), Failure> {
        let start = Instant::now();
        loop {
            if crate::is_mounted(&self.dir) {
                return Ok(());
            }
            // Relaxed: the flag is the only thing the signal handler publishes.
            if interrupted.load(Ordering::Relaxed) {
                return Err(Failure::Interrupted);
            }
            let child = self
                .child
                .as_mut()
                .expect("waited for only in finish and drop");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(Failure::Setup(format!(
                    "the mount failed: fatcache mount exited with {status}; log tail:\n{}",
                    log_tail(&self.log)
                )));
            }
            if start.elapsed() > MOUNT_WAIT {
                return Err(Failure::Setup(format!(
                    "the mount failed: {} did not appear within {MOUNT_WAIT:?}; log tail:\n{}",
                    self.dir.display(),
                    log_tail(&self.log)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unmounts (`fusermount3 -u`, or `umount`) and waits for the daemon; its exit status,
    /// or why there is none.
    pub(super) fn finish(mut self) -> Result<ExitStatus, String> {
        let start = Instant::now();
        while crate::is_mounted(&self.dir) {
            if !unmount(&self.dir, false) && start.elapsed() > Duration::from_secs(5) {
                // Still busy after retries: detach now, the daemon ends when it is let go.
                unmount(&self.dir, true);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut child = self.child.take().expect("finish runs once");
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if start.elapsed() < EXIT_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("the daemon did not exit within {EXIT_WAIT:?}"));
                }
                Err(e) => return Err(format!("cannot wait for the daemon: {e}")),
            }
        }
    }
}

impl Drop for Mount {
    /// The daemon's own SIGTERM path writes back and detaches the mount; a daemon that does
    /// not end within a grace period is killed, and whatever mount it leaves is detached.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let start = Instant::now();
        let exited = loop {
            match child.try_wait() {
                Ok(None) if start.elapsed() < DROP_GRACE => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => break false,
                _ => break true,
            }
        };
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        if crate::is_mounted(&self.dir) {
            unmount(&self.dir, true);
        }
    }
}

/// One unmount attempt on `dir`, lazy (detach now, end when no longer busy) or not; whether
/// it worked. fusermount3 first, as a user's mount needs; umount for root without fuse3.
fn unmount(dir: &Path, lazy: bool) -> bool {
    let tries: [(&str, &[&str]); 2] = if lazy {
        [("fusermount3", &["-u", "-z"]), ("umount", &["-l"])]
    } else {
        [("fusermount3", &["-u"]), ("umount", &[])]
    };
    tries.iter().any(|(prog, args)| {
        Command::new(prog)
            .args(*args)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}
