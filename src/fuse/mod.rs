//! The FUSE side: the only module that imports `fuser`. [`fs::FatFuse`] turns requests into
//! [`Volume`] calls; [`serve`] mounts a volume and runs the session until it is unmounted from
//! outside or the process gets SIGINT, SIGTERM or SIGHUP, which unmount it cleanly.
//!
//! * [`options`]: the `-o` mount options, vfat's and ours.
//! * [`fs`]: the `fuser::Filesystem` implementation.
//! * `perm`: who may set a file's times (`allow_utime=`).

pub mod fs;
pub mod options;
mod perm;

use std::path::Path;
use std::time::Duration;

use fuser::{Config, MountOption};

use crate::fat::volume::{FsPanic, Volume};
use crate::fuse::fs::FatFuse;
use crate::fuse::options::FuseOptions;
use crate::sync::Arc;

/// How often the foreground loop looks whether the session ended from outside.
const POLL: Duration = Duration::from_millis(100);

/// Mounts `image` on `mountpoint` with `opts` and serves it until it is unmounted (umount,
/// fusermount3 -u) or a SIGINT, SIGTERM or SIGHUP arrives; either way the volume is written
/// back and marked clean before this returns. Errors name what failed.
pub fn serve(image: &Path, mountpoint: &Path, opts: FuseOptions) -> Result<(), String> {
    let vol = Volume::mount(image, opts.volume.clone())
        .map_err(|e| format!("cannot mount {}: {e}", image.display()))?;
    let vol = Arc::new(vol);
    stop_on_fs_panic();
    let mut config = opts.fuser_config();
    let add = |config: &mut Config, o: MountOption| {
        if !config.mount_options.contains(&o) {
            config.mount_options.push(o);
        }
    };
    if opts.fsname.is_none() {
        add(
            &mut config,
            MountOption::FSName(image.display().to_string()),
        );
    }
    // The kernel checks permissions against the modes we report, as it does for vfat.
    add(&mut config, MountOption::DefaultPermissions);
    if vol.read_only() {
        add(&mut config, MountOption::RO);
    }
    config.n_threads = Some(opts.threads.max(1));
    // One /dev/fuse descriptor per worker thread: requests really run in parallel.
    config.clone_fd = true;
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot watch for signals: {e}"))?;
    let handle = signals.handle();
    let log = opts.log.clone();
    let read_ahead = opts
        .read_ahead_kb()
        .map(|kb| (kb, opts.read_ahead_kb.is_some()));
    // Resolved before the mount: afterwards that would ask the mount itself.
    let resolved = std::fs::canonicalize(mountpoint);
    let fs = FatFuse::new(Arc::clone(&vol), opts);
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .map_err(|e| format!("cannot mount on {}: {e}", mountpoint.display()))?;
    log::info!(
        "fatcache: {} mounted on {}",
        image.display(),
        mountpoint.display()
    );
    if let Some((kb, asked)) = read_ahead {
        match resolved {
            Ok(at) => start_read_ahead(at, kb, asked),
            Err(e) => log::info!(
                "fatcache: read_ahead_kb={kb} not set: {}: {e}",
                mountpoint.display()
            ),
        }
    }
    if let Some(path) = &log {
        // After the mount: errors up to here still reach whoever started us.
        if let Err(e) = redirect_stderr(path) {
            log::error!("fatcache: log={}: {e}; logging to stderr", path.display());
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = std::thread::Builder::new()
        .name("fatcache-signals".to_owned())
        .spawn(move || {
            let mut signals = signals;
            if let Some(sig) = signals.forever().next() {
                let _ = tx.send(sig);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    let ended = loop {
        match rx.recv_timeout(POLL) {
            Ok(sig) => {
                log::info!("fatcache: signal {sig}: unmounting");
                // Everything is on the disk before anything can fail; the dirty bit goes when
                // the session ends.
                if let Err(e) = vol.sync_fs() {
                    log::error!("fatcache: sync on signal {sig}: {e}");
                }
                // A lazy unmount, as libfuse does: a busy mount (a shell's cwd in it) would
                // refuse a plain one, and the session would end with the volume dirty.
                detach(mountpoint);
                break session.join();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if session.guard.is_finished() => {
                break session.join();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                detach(mountpoint);
                break session.join();
            }
        }
    };
    handle.close();
    let _ = watcher.join();
    match ended {
        Ok(()) => {}
        // ECONNABORTED instead of ENODEV from a worker's read of /dev/fuse: the kernel tore
        // the connection down with the read under way (seen under load at the end of a lazily
        // unmounted mount, SIGTERM with a file still open: 5 of 25 runs with two CPU hogs),
        // or an administrator aborted it through fusectl. fuser takes ENODEV as the end and
        // passes this one up, but the session is over either way and destroy() has run:
        // whether everything reached the image is the check below, not this.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            log::info!("fatcache: the kernel ended the FUSE connection ({e})");
        }
        Err(e) => return Err(format!("the FUSE session ended with an error: {e}")),
    }
    // destroy() wrote everything back; a failure there was logged. Say so in the status too.
    if vol.remounted_read_only() {
        return Err(format!(
            "{} has corrupt metadata and was made read-only (errors=remount-ro); it is left \
             marked dirty for fsck",
            image.display()
        ));
    }
    if !vol.cleanly_shut_down() {
        return Err(format!(
            "{} was not written back cleanly (see the log); it is left marked dirty for fsck",
            image.display()
        ));
    }
    Ok(())
}

/// Sets the mount's readahead to `kb` KiB once the kernel has taken the INIT reply, on a thread
/// of its own. Not before: the kernel lowers the readahead to the INIT reply's max_readahead,
/// which fuser cannot raise above the kernel's offer (its current readahead, 128 KiB). A stat
/// of the mount point is the wait: the kernel holds it until INIT is done, and the workers
/// answer it. Not on the main thread, which must keep watching for signals even if the stat
/// never returns. A reader that starts at once may see the old readahead for a moment: it is
/// only slower. `asked`: the user gave `read_ahead_kb=`, so a failure is a warning.
fn start_read_ahead(mountpoint: std::path::PathBuf, kb: u32, asked: bool) {
    let set = move || {
        use std::os::unix::fs::MetadataExt;
        let r = std::fs::metadata(&mountpoint)
            .map_err(|e| format!("{}: {e}", mountpoint.display()))
            .and_then(|m| set_read_ahead(m.dev(), kb));
        match r {
            Ok(()) => log::debug!("fatcache: read_ahead_kb={kb} set"),
            // Only root may write the knob; the mount works without it, only slower.
            Err(e) if asked => log::warn!("fatcache: read_ahead_kb={kb} not set: {e}"),
            Err(e) => log::info!("fatcache: read_ahead_kb={kb} not set: {e}"),
        }
    };
    let started = std::thread::Builder::new()
        .name("fatcache-readahead".to_owned())
        .spawn(set);
    if let Err(e) = started {
        log::warn!("fatcache: read_ahead_kb={kb} not set: no thread: {e}");
    }
}

/// Sets the readahead of the FUSE mount whose device is `dev` (the mount point's st_dev, which
/// the kernel fills in, not fatcache) to `kb` KiB, through the `read_ahead_kb` of the backing
/// device FUSE registers under that number, as `blockdev --setra` or a udev rule would.
fn set_read_ahead(dev: u64, kb: u32) -> Result<(), String> {
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(&knob, format!("{kb}\n")).map_err(|e| format!("{knob}: {e}"))
}

/// Makes `errors=panic` stop the process: the panic it raises in a FUSE worker would only end
/// that thread (fuser answers its request with EIO and the mount goes on), while the kernel
/// stops the machine. The process aborts at once, so nothing more reaches the image, and the
/// kernel ends the connection: the mount answers ENOTCONN until it is unmounted. Any other
/// panic keeps the default behaviour.
fn stop_on_fs_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(FsPanic(what)) = info.payload().downcast_ref::<FsPanic>() {
            log::error!("fatcache: errors=panic: {what}; stopping now");
            eprintln!("fatcache: errors=panic: {what}; stopping now, nothing more is written");
            std::process::abort();
        }
        default(info);
    }));
}

/// Points file descriptor 2 at `path` (appending, created 0600), so the log and BUG
/// reports of a daemon whose caller has gone land somewhere a person can read them.
fn redirect_stderr(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    nix::unistd::dup2_stderr(&file).map_err(std::io::Error::from)?;
    Ok(())
}

/// Detaches the mount now and lets it go once it is no longer busy (umount -l as root,
/// fusermount3 -uz otherwise); the FUSE session ends when the last user lets go.
fn detach(mountpoint: &Path) {
    let tries: [(&str, &[&str]); 2] = [("fusermount3", &["-u", "-z"]), ("umount", &["-l"])];
    for (prog, args) in tries {
        let status = std::process::Command::new(prog)
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return;
        }
    }
    log::error!("fatcache: could not detach {}", mountpoint.display());
}
