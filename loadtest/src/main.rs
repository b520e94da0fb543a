//! The `loadtest` binary: parse, run (in this process, or split over worker
//! processes), report, apply thresholds.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = loadtest::Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("loadtest: {e:#}");
        return ExitCode::from(64);
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let result = if args.workers > 1 && args.worker_index.is_none() {
        let argv: Vec<_> = std::env::args_os().skip(1).collect();
        std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|exe| loadtest::workers::run_parent(&exe, &argv, &args))
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        if args.worker_index.is_some() {
            // A worker: its tally goes to the parent, which reports.
            return match runtime.block_on(loadtest::workers::serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadtest worker: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        runtime.block_on(loadtest::run(args.clone()))
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let text = serde_json::to_string_pretty(&report).expect("a JSON value");
    println!("{text}");
    if let Some(path) = &args.report
        && let Err(e) = std::fs::write(path, &text)
    {
        eprintln!("loadtest: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    match loadtest::check(&args, &report) {
        Some(why) => {
            eprintln!("loadtest: threshold failed: {why}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}
