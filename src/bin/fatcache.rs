//! The `fatcache` command line.
//!
//! Today: `fatcache demo` runs the race interleavings of SEMANTICS section 5 (S1, S2) on the
//! page-cache core with real threads, in every era, and prints one line per era and scenario
//! plus the first BUG report; `fatcache eras` lists the eras. Mounting comes with the FUSE layer.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fatcache::mm::{ALL_ERAS, Era};
use fatcache::scenario::{self, Scenario};

#[derive(Parser)]
#[command(
    name = "fatcache",
    version,
    about = "FAT over a Linux-like page cache, for writeback races"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the S1 (three-CPU) and S2 (frame reuse) races on the page cache in each era.
    Demo {
        /// Only this era (v5.8 v5.9 v5.10 v5.11 v6.9 alt-a alt-b); default: all.
        #[arg(long)]
        era: Option<Era>,
        /// Only this scenario (s1 or s2); default: both.
        #[arg(long, value_parser = parse_scenario)]
        scenario: Option<Scenario>,
        /// Print the full BUG report of every hit, not only the first.
        #[arg(long)]
        all_reports: bool,
    },
    /// List the kernel eras and what each one models.
    Eras,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    match s.to_ascii_lowercase().as_str() {
        "s1" => Ok(Scenario::S1),
        "s2" => Ok(Scenario::S2),
        _ => Err(format!("unknown scenario {s:?}: expected s1 or s2")),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Eras => {
            for e in ALL_ERAS {
                println!("{:<6} {}", e.name(), e.describe());
            }
            ExitCode::SUCCESS
        }
        Cmd::Demo {
            era,
            scenario,
            all_reports,
        } => demo(era, scenario, all_reports),
    }
}

fn demo(era: Option<Era>, which: Option<Scenario>, all_reports: bool) -> ExitCode {
    let eras: Vec<Era> = era.map(|e| vec![e]).unwrap_or_else(|| ALL_ERAS.to_vec());
    let scenarios: Vec<Scenario> = which
        .map(|s| vec![s])
        .unwrap_or_else(|| vec![Scenario::S1, Scenario::S2]);
    let mut all_match = true;
    let mut shown = false;
    let mut lines = Vec::new();
    for s in &scenarios {
        for e in &eras {
            let o = match scenario::run(*s, *e) {
                Ok(o) => o,
                Err(err) => {
                    eprintln!("fatcache: {} in {e}: {err}", s.name());
                    return ExitCode::FAILURE;
                }
            };
            let verdict = if o.matches_history() {
                "match"
            } else {
                "MISMATCH"
            };
            all_match &= o.matches_history();
            lines.push(format!(
                "{:<6} scenario={} hits={} stale={} frame_reused={} expected={} verdict={}",
                e.name(),
                s.name(),
                o.wcp_bugs,
                o.stale_wakes,
                o.frame_reused,
                if s.bug_expected(*e) { "BUG" } else { "clean" },
                verdict
            ));
            if o.wcp_bugs > 0 && (!shown || all_reports) {
                if let Some(r) = &o.report {
                    println!("=== first BUG: {} in era {e} ===\n{r}", s.name());
                    shown = true;
                }
            }
        }
    }
    for l in lines {
        println!("{l}");
    }
    if all_match {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
