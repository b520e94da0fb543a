//! The `gateway` binary: configuration, logging, signals; the node itself
//! is [`gateway::run`].

#![forbid(unsafe_code)]

use std::process::ExitCode;

use dispatcher::settings::EXIT_CONFIG;
use gateway::{Config, ConfigError};
use tokio_util::sync::CancellationToken;

// `--features system-alloc` keeps the system allocator, so that heap
// profilers that interpose malloc (heaptrack) see every allocation.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Cli { message, help: true }) => {
            print!("{message}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gateway: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let check_only = config.check_config;
    let settings = match config.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_only {
        println!("configuration ok: {:#?}", settings.config.redacted());
        return ExitCode::SUCCESS;
    }
    settings.config.log.init();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(settings.config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("gateway: cannot listen on {}: {e}", settings.config.listen);
                return ExitCode::FAILURE;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "listening");
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match gateway::run(listener, settings, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ gateway::GatewayError::Bus(dispatcher::BusError::Config(_))) => {
                tracing::error!(error = %e, "gateway cannot join the cluster");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(e) => {
                tracing::error!(error = %e, "gateway failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// First SIGTERM or SIGINT drains; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for n in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            tracing::info!("signal received: draining (send again to exit now)");
            shutdown.cancel();
        }
    }
    std::process::exit(130);
}
