//! Real programs on a mount: cp -a and tar round trips of this repository's `src/`, a dd and
//! truncate loop on a `sync` mount against the same commands on a host file, dd of 200 MiB
//! with conv=fsync, 2,000 small files in one directory, a rename storm from several threads,
//! git, sqlite3 and fio, and all of it at once on a 1 MiB page cache.

use std::fs;
use std::path::{Path, PathBuf};

use crate::basic::Model;
use crate::common::readers::{Node, Tree, assert_trees_agree, compare_trees};
use crate::common::repo_path;
use crate::harness::{Fat, Mounted, Rng, host_tree, optional_tool, q, sh_ok, under};

/// A private copy of this repository's `src/` in `scratch/stage/src`, owned by the test (so
/// `cp -a` and `tar` need not chown) and frozen (others may be editing the real one).
fn stage_src(scratch: &Path) -> PathBuf {
    let stage = scratch.join("stage");
    fs::create_dir_all(&stage).expect("mkdir stage");
    sh_ok(
        scratch,
        &format!("cp -r {} {}", q(&repo_path("src")), q(&stage.join("src"))),
    );
    stage.join("src")
}

/// `diff -r a b` finds nothing.
#[track_caller]
fn diff_r(cwd: &Path, a: &Path, b: &Path) {
    sh_ok(cwd, &format!("diff -r {} {}", q(a), q(b)));
}

fn cp_a(fat: Fat) {
    let m = Mounted::new(fat, "cp", "");
    let src = stage_src(m.scratch());
    let into = m.path("src");
    sh_ok(m.scratch(), &format!("cp -a {} {}", q(&src), q(&into)));
    diff_r(m.scratch(), &src, &into);
    // And out again, into a second host copy.
    let out = m.scratch().join("out");
    sh_ok(m.scratch(), &format!("cp -a {} {}", q(&into), q(&out)));
    diff_r(m.scratch(), &src, &out);
    let want = under("src", &host_tree(&src));
    let done = m.finish();
    assert_trees_agree(&done.image, &want);
}

#[test]
fn cp_a_fat16() {
    cp_a(Fat::F16);
}

#[test]
fn cp_a_fat32() {
    cp_a(Fat::F32);
}

fn tar_round_trip(fat: Fat) {
    let m = Mounted::new(fat, "tar", "");
    let src = stage_src(m.scratch());
    let stage = src.parent().expect("stage dir").to_path_buf();
    let s = m.scratch().to_path_buf();
    let (tar_in, tar_out) = (s.join("in.tar"), s.join("out.tar"));
    sh_ok(&s, &format!("tar cf {} -C {} src", q(&tar_in), q(&stage)));
    sh_ok(
        &s,
        &format!("tar xf {} -C {} --no-same-owner", q(&tar_in), q(&m.dir)),
    );
    diff_r(&s, &src, &m.path("src"));
    sh_ok(&s, &format!("tar cf {} -C {} src", q(&tar_out), q(&m.dir)));
    let list = |t: &Path| sh_ok(&s, &format!("tar tf {} | sort", q(t)));
    assert_eq!(
        list(&tar_in),
        list(&tar_out),
        "tar listings in and out differ"
    );
    let back = s.join("back");
    fs::create_dir(&back).expect("mkdir back");
    sh_ok(&s, &format!("tar xf {} -C {}", q(&tar_out), q(&back)));
    diff_r(&s, &src, &back.join("src"));
    let want = under("src", &host_tree(&src));
    let done = m.finish();
    assert_trees_agree(&done.image, &want);
}

#[test]
fn tar_round_trip_fat16() {
    tar_round_trip(Fat::F16);
}

#[test]
fn tar_round_trip_fat32() {
    tar_round_trip(Fat::F32);
}

/// Iterations of the dd and truncate loop.
const DD_STEPS: usize = 50;

/// One step of the loop as a shell command on the file `$F`, from `rng`.
fn dd_step(rng: &mut Rng, pool: &Path) -> String {
    let pool = q(pool);
    match rng.below(10) {
        0..=3 => {
            let (count, skip, seek) = (1 + rng.below(8), rng.below(200), rng.below(64));
            let fsync = if rng.below(4) == 0 { ",fsync" } else { "" };
            format!(
                "dd if={pool} of=\"$F\" bs=4096 count={count} skip={skip} seek={seek} \
                 conv=notrunc{fsync} status=none"
            )
        }
        4 | 5 => {
            // Unaligned: a block size that is no multiple of a page or a sector.
            let (count, skip, seek) = (1 + rng.below(20), rng.below(500), rng.below(300));
            format!(
                "dd if={pool} of=\"$F\" bs=1000 count={count} skip={skip} seek={seek} \
                 conv=notrunc status=none"
            )
        }
        6 => format!("truncate -s {} \"$F\"", rng.below(400_000)),
        7 => format!("truncate -s {} \"$F\"", rng.below(40_000)),
        8 => format!("truncate -s +{} \"$F\"", rng.below(30_000)),
        _ => "sync \"$F\"".to_owned(),
    }
}

fn dd_truncate_loop(fat: Fat) {
    let m = Mounted::new(fat, "dd", "sync");
    let s = m.scratch().to_path_buf();
    let mut rng = Rng::new(0xdd ^ fat as u64);
    let pool = s.join("pool");
    fs::write(&pool, rng.bytes(1 << 20)).expect("write the pool");
    let (on_mount, on_host) = (m.path("f"), s.join("host-f"));
    let mut script = format!(
        "set -e\nA={}\nB={}\n: > \"$A\"\n: > \"$B\"\n",
        q(&on_mount),
        q(&on_host)
    );
    for i in 0..DD_STEPS {
        let step = dd_step(&mut rng, &pool);
        script.push_str(&format!(
            "for F in \"$A\" \"$B\"; do {step}; done\n\
             cmp \"$A\" \"$B\" || {{ echo 'step {i} diverged: {}'; exit 1; }}\n",
            step.replace('\'', "")
        ));
        if i % 10 == 9 {
            script.push_str("sync\n");
        }
    }
    script.push_str("sync\ncmp \"$A\" \"$B\"\n");
    sh_ok(&s, &script);
    let want = fs::read(&on_host).expect("read the host file");
    let mut model = Model::default();
    model.file("/f", &want);
    let done = m.finish();
    assert_trees_agree(&done.image, &model.0);
}

#[test]
fn dd_truncate_sync_fat16() {
    dd_truncate_loop(Fat::F16);
}

#[test]
fn dd_truncate_sync_fat32() {
    dd_truncate_loop(Fat::F32);
}

/// Files of [`many_small_files`].
const MANY: usize = 2_000;

fn many_small_files(fat: Fat) {
    let m = Mounted::new(fat, "many", "");
    let dir = m.path("many");
    fs::create_dir(&dir).expect("mkdir many");
    sh_ok(
        &dir,
        &format!(
            "i=0; while [ $i -lt {MANY} ]; do echo \"small file $i\" > \"small file $i.txt\"; \
             i=$((i+1)); done"
        ),
    );
    let count = sh_ok(&dir, "ls | wc -l");
    assert_eq!(count.trim(), MANY.to_string(), "ls | wc -l");
    let mut model = Model::default();
    model.dir("/many");
    for i in 0..MANY {
        let name = format!("small file {i}.txt");
        let want = format!("small file {i}\n");
        let got = fs::read(dir.join(&name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert_eq!(got, want.as_bytes(), "{name}");
        model.file(&format!("/many/{name}"), want.as_bytes());
    }
    let done = m.finish();
    assert_trees_agree(&done.image, &model.0);
}

#[test]
fn many_small_files_fat16() {
    many_small_files(Fat::F16);
}

#[test]
fn many_small_files_fat32() {
    many_small_files(Fat::F32);
}

/// Threads of the rename storm, files per thread, rounds.
const STORM: (usize, usize, usize) = (4, 40, 15);

/// Each thread renames its own files round after round among three directories, long names
/// and short, so directories grow, shrink and reuse slots while other threads do the same.
fn rename_storm(fat: Fat) {
    let m = Mounted::new(fat, "storm", "");
    let (threads, files, rounds) = STORM;
    let dirs = ["d0", "d1", "d2 with a long name"];
    for d in dirs {
        fs::create_dir(m.path(d)).expect("mkdir");
    }
    let name = |t: usize, f: usize, r: usize| {
        let d = dirs[(t + f + r) % dirs.len()];
        if r % 2 == 0 {
            format!("{d}/t{t}f{f}.r")
        } else {
            format!("{d}/thread {t} file {f} round {r}.data")
        }
    };
    for t in 0..threads {
        for f in 0..files {
            fs::write(m.path(&name(t, f, 0)), format!("{t}/{f}")).expect("write");
        }
    }
    std::thread::scope(|scope| {
        for t in 0..threads {
            let m = &m;
            scope.spawn(move || {
                for r in 1..rounds {
                    for f in 0..files {
                        let (from, to) = (m.path(&name(t, f, r - 1)), m.path(&name(t, f, r)));
                        fs::rename(&from, &to).unwrap_or_else(|e| {
                            panic!("rename {} -> {}: {e}", from.display(), to.display())
                        });
                    }
                }
            });
        }
    });
    let mut model = Model::default();
    for d in dirs {
        model.dir(&format!("/{d}"));
    }
    for t in 0..threads {
        for f in 0..files {
            model.file(
                &format!("/{}", name(t, f, rounds - 1)),
                format!("{t}/{f}").as_bytes(),
            );
        }
    }
    if let Err(diff) = compare_trees(&model.0, &host_tree(&m.dir)) {
        panic!("the mount differs after the storm:\n{diff}");
    }
    let done = m.finish();
    assert_trees_agree(&done.image, &model.0);
}

#[test]
fn rename_storm_fat16() {
    rename_storm(Fat::F16);
}

#[test]
fn rename_storm_fat32() {
    rename_storm(Fat::F32);
}

/// The whole tree of the mount as the kernel shows it now: what the readers must find after
/// unmounting, for programs whose files (.git, journals) a test cannot predict.
fn snapshot(m: &Mounted) -> Tree {
    host_tree(&m.dir)
}

fn git(fat: Fat) {
    if optional_tool("git", "git").is_none() {
        return;
    }
    let m = Mounted::new(fat, "git", "");
    let s = m.scratch().to_path_buf();
    let src = stage_src(&s);
    let repo = m.path("repo");
    fs::create_dir(&repo).expect("mkdir repo");
    let env = format!(
        "export HOME={h} GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' \
         GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'\n\
         git config --global user.email t@example.com\n\
         git config --global user.name Tester\n\
         git config --global init.defaultBranch main\n",
        h = q(&s)
    );
    sh_ok(
        &repo,
        &format!(
            "{env}set -e\ngit init -q .\ncp -r {src}/. .\ngit add -A\ngit commit -q -m first\n\
             echo changed >> lib.rs\ngit mv bug.rs bug_renamed.rs\ngit commit -q -a -m second\n\
             git fsck --full --strict\n",
            src = q(&src)
        ),
    );
    let log = sh_ok(&repo, &format!("{env}git log --oneline"));
    assert_eq!(log.lines().count(), 2, "git log: {log}");
    let status = sh_ok(&repo, &format!("{env}git status --porcelain"));
    assert_eq!(status, "", "git status after the commits");
    let want = snapshot(&m);
    let done = m.finish();
    assert_trees_agree(&done.image, &want);
    // A fresh clone of the unmounted state: every object git wrote is readable by git, through
    // mtools's copy of the repository.
    let copy = done.scratch.0.join("copy");
    fs::create_dir(&copy).expect("mkdir copy");
    sh_ok(
        &copy,
        &format!(
            "{env}set -e\nMTOOLS_SKIP_CHECK=1 mcopy -s -n -i {img} ::/repo .\ncd repo\n\
             git fsck --full --strict\ngit log --oneline | wc -l | grep -qx 2\n\
             git status --porcelain | wc -l | grep -qx 0\n",
            img = q(&done.image)
        ),
    );
}

#[test]
fn git_fat16() {
    git(Fat::F16);
}

#[test]
fn git_fat32() {
    git(Fat::F32);
}

/// Rows per transaction and transactions of the sqlite test.
const SQLITE_ROWS: (usize, usize) = (1_000, 10);

fn sqlite(fat: Fat, opts: &str, journal: &str) {
    if optional_tool("sqlite3", "sqlite3").is_none() {
        return;
    }
    let m = Mounted::new(fat, "sqlite", opts);
    let (rows, txs) = SQLITE_ROWS;
    let mut sql = format!(
        "PRAGMA journal_mode={journal};\n\
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, pad BLOB);\n"
    );
    for tx in 0..txs {
        sql.push_str(&format!(
            "BEGIN;\nWITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < \
             {rows}) INSERT INTO t(v, pad) SELECT printf('tx {tx} row %d', x), \
             randomblob(100) FROM c;\nCOMMIT;\n"
        ));
    }
    sql.push_str("SELECT count(*) FROM t;\nPRAGMA integrity_check;\n");
    let sql_file = m.scratch().join("load.sql");
    fs::write(&sql_file, sql).expect("write the SQL");
    let db = m.path("data.db");
    let out = sh_ok(
        m.scratch(),
        &format!("sqlite3 {} < {}", q(&db), q(&sql_file)),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [journal, &(rows * txs).to_string(), "ok"],
        "sqlite3 output"
    );
    let want = snapshot(&m);
    let done = m.finish();
    assert_trees_agree(&done.image, &want);
    // The unmounted database, read through mtools's copy.
    let copy = done.scratch.0.join("copy.db");
    sh_ok(
        &done.scratch.0,
        &format!(
            "MTOOLS_SKIP_CHECK=1 mcopy -n -i {} ::/data.db {}",
            q(&done.image),
            q(&copy)
        ),
    );
    let check = sh_ok(
        &done.scratch.0,
        &format!(
            "sqlite3 {} 'PRAGMA integrity_check; SELECT count(*) FROM t;'",
            q(&copy)
        ),
    );
    assert_eq!(
        check.trim(),
        format!("ok\n{}", rows * txs),
        "the copied database"
    );
}

#[test]
fn sqlite_fat16() {
    sqlite(Fat::F16, "", "delete");
}

/// WAL needs shared writable mmap of the -shm file: the kernel caches file data here.
#[test]
fn sqlite_wal_cache_kernel_fat32() {
    sqlite(Fat::F32, "cache=kernel", "wal");
}

/// Whether this kernel gives FOPEN_DIRECT_IO files (cache=direct) shared writable mappings:
/// only with FUSE_DIRECT_IO_ALLOW_MMAP, which kernels offer from 6.6 on (before, MAP_SHARED
/// fails with ENODEV). Says so when `test` is skipped for it.
fn direct_io_mmap(test: &str) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let new_enough = (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 6);
    if !new_enough {
        println!("skipping {test}: kernel {release} has no FUSE_DIRECT_IO_ALLOW_MMAP");
    }
    new_enough
}

/// WAL in the default cache=direct: sqlite maps its -shm file MAP_SHARED (before
/// FUSE_DIRECT_IO_ALLOW_MMAP, sqlite3 failed with "disk I/O error").
#[test]
fn sqlite_wal_fat16() {
    if direct_io_mmap("sqlite_wal_fat16") {
        sqlite(Fat::F16, "", "wal");
    }
}

/// fio's random 4 KiB writes with crc32c verification through `engine` (psync: write(2);
/// mmap: stores into a shared mapping, written back by the kernel), then the image must hold
/// what the mount shows.
fn fio(fat: Fat, engine: &str) {
    if optional_tool("fio", "fio").is_none() {
        return;
    }
    let m = Mounted::new(fat, "fio", "");
    let file = m.path("fio.dat");
    let out = sh_ok(
        m.scratch(),
        &format!(
            "fio --name=v --filename={} --size=8M --ioengine={engine} --rw=randwrite --bs=4k \
             --verify=crc32c --do_verify=1 --randseed=1234 --verify_fatal=1 \
             --output-format=terse",
            q(&file)
        ),
    );
    assert!(!out.contains("verify: bad"), "fio: {out}");
    let want = snapshot(&m);
    let size = match want.get("/fio.dat") {
        Some(Node::File(d)) => d.len(),
        other => panic!("fio.dat: {other:?}"),
    };
    assert_eq!(size, 8 << 20, "fio.dat size");
    let done = m.finish();
    assert_trees_agree(&done.image, &want);
}

#[test]
fn fio_verify_fat16() {
    fio(Fat::F16, "psync");
}

#[test]
fn fio_verify_fat32() {
    fio(Fat::F32, "psync");
}

/// Shared-mapping writes on a default (cache=direct) mount, which needs
/// FUSE_DIRECT_IO_ALLOW_MMAP.
#[test]
fn fio_mmap_verify_fat32() {
    if direct_io_mmap("fio_mmap_verify_fat32") {
        fio(Fat::F32, "mmap");
    }
}

/// dd of 200 MiB with conv=fsync onto a 256 MiB FAT32 image, cmp through the mount; after the
/// unmount, mtools's copy and `fatcache cat` of the file are the same bytes.
#[test]
fn dd_200mb_fsync_fat32() {
    crate::harness::require_fuse();
    let scratch = crate::common::TempDir::new("mount", "dd200");
    let image = scratch.0.join("big.img");
    crate::harness::fatcache_mkfs(&image, "256M", 32).expect("mkfs");
    let src = scratch.0.join("src.bin");
    {
        let mut rng = Rng::new(200);
        let mut out = std::io::BufWriter::new(fs::File::create(&src).expect("create src.bin"));
        for _ in 0..200 {
            std::io::Write::write_all(&mut out, &rng.bytes(1 << 20)).expect("write src.bin");
        }
        std::io::Write::flush(&mut out).expect("flush src.bin");
    }
    let m = Mounted::on(scratch, image, "");
    let on_mount = m.path("big.bin");
    sh_ok(
        m.scratch(),
        &format!(
            "dd if={} of={} bs=1M conv=fsync status=none",
            q(&src),
            q(&on_mount)
        ),
    );
    sh_ok(m.scratch(), &format!("cmp {} {}", q(&src), q(&on_mount)));
    let done = m.finish();
    let s = &done.scratch.0;
    sh_ok(
        s,
        &format!(
            "MTOOLS_SKIP_CHECK=1 mcopy -n -i {img} ::/big.bin mtools.bin && cmp {src} mtools.bin\n\
             {bin} cat {img} /big.bin | cmp {src} -",
            img = q(&done.image),
            src = q(&src),
            bin = env!("CARGO_BIN_EXE_fatcache"),
        ),
    );
}

/// Everything at once on a 1 MiB page cache with eager writeback: two `cp -a` of `src/`, the
/// dd/truncate loop against its host twin and (if installed) a fio verify job run in
/// parallel, so reclaim, writeback and the FUSE workers all interleave. Then the copies diff
/// clean, the loop's file equals its twin, no BUG was hit, and the readers agree.
fn pressure(fat: Fat) {
    let opts = "cache_mb=1,threads=8,writeback_interval_ms=20,dirty_expire_ms=50";
    let m = Mounted::new(fat, "pressure", opts);
    let s = m.scratch().to_path_buf();
    let src = stage_src(&s);
    let mut rng = Rng::new(0x9e55 ^ fat as u64);
    let pool = s.join("pool");
    fs::write(&pool, rng.bytes(1 << 20)).expect("write the pool");
    let (a, b) = (m.path("loop"), s.join("host-loop"));
    let mut script = format!("set -e\nA={}\nB={}\n: > \"$A\"\n: > \"$B\"\n", q(&a), q(&b));
    for _ in 0..DD_STEPS {
        script.push_str(&format!(
            "for F in \"$A\" \"$B\"; do {}; done\n",
            dd_step(&mut rng, &pool)
        ));
    }
    script.push_str("cmp \"$A\" \"$B\"\n");
    let loop_file = s.join("loop.sh");
    fs::write(&loop_file, script).expect("write loop.sh");
    let fio = if crate::common::find_tool("fio").is_some() {
        format!(
            "fio --name=p --directory={} --size=2M --numjobs=2 --rw=randrw --bs=4k \
             --verify=crc32c --do_verify=1 --verify_fatal=1 --randseed=7 \
             --output-format=terse > /dev/null & pids=\"$pids $!\"\n",
            q(&m.path("fio"))
        )
    } else {
        println!("pressure: fio not found (CI installs it): running without it");
        String::new()
    };
    fs::create_dir(m.path("fio")).expect("mkdir fio");
    sh_ok(
        &s,
        &format!(
            "pids=\ncp -a {src} {c1} & pids=\"$pids $!\"\ncp -a {src} {c2} & pids=\"$pids $!\"\n\
             sh {lp} & pids=\"$pids $!\"\n{fio}\
             for p in $pids; do wait $p || {{ echo \"job $p failed\"; exit 1; }}; done\n\
             diff -r {src} {c1}\ndiff -r {src} {c2}\n",
            src = q(&src),
            c1 = q(&m.path("c1")),
            c2 = q(&m.path("c2")),
            lp = q(&loop_file),
        ),
    );
    let stats = stats(&m);
    if let Some(stats) = &stats {
        assert!(
            stats.contains("\"bug_hits\":0,"),
            "BUG hits under pressure: {stats}"
        );
    }
    let want = snapshot(&m);
    let done = m.finish();
    assert_trees_agree(&done.image, &want);
}

/// The `user.fatcache.stats` JSON of the mount's root, if getfattr is installed.
fn stats(m: &Mounted) -> Option<String> {
    optional_tool("the stats xattr", "getfattr")?;
    Some(sh_ok(
        m.scratch(),
        &format!(
            "getfattr --only-values -n user.fatcache.stats {}",
            q(&m.dir)
        ),
    ))
}

#[test]
fn pressure_fat16() {
    pressure(Fat::F16);
}

#[test]
fn pressure_fat32() {
    pressure(Fat::F32);
}
