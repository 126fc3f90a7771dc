//! `ratelimit-load [OPTIONS]`: starts Redis and several api-server instances, drives HTTP
//! load over them, and prints the report as Markdown (see `--help` and `load/README.md`).
//!
//! Exit status: 0 when every answer was 200 or 429; 1 when the run saw anything else (the
//! report says what); 2 for bad arguments; 130 when interrupted. Whatever it started is
//! stopped in every case.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, error::ErrorKind};
use ratelimit_load::{Args, LoadError, Report, run};

#[tokio::main]
async fn main() -> ExitCode {
    // clap prints `--help` and exits 0, or the error and exits 2.
    let args = Args::parse();
    let options = match args.options() {
        Ok(options) => options,
        Err(e) => Args::command().error(ErrorKind::ValueValidation, e).exit(),
    };
    let json = args.json();
    // Dropping the run on a signal stops every process it started before we exit.
    let outcome = tokio::select! {
        outcome = run(&options) => outcome,
        () = interrupted() => Err(LoadError::Interrupted),
    };
    match outcome {
        Ok(report) => match print(&report, json) {
            Ok(()) if report.failures.is_empty() => ExitCode::SUCCESS,
            Ok(()) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("ratelimit-load: {e}");
                ExitCode::FAILURE
            }
        },
        Err(LoadError::Interrupted) => {
            eprintln!("ratelimit-load: interrupted; everything it started is stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("ratelimit-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The Markdown on stdout, and the JSON where asked (`-`: stdout, instead of the Markdown).
fn print(report: &Report, json: Option<&std::path::Path>) -> Result<(), LoadError> {
    let io = |what: String| move |source| LoadError::Io { what, source };
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| io("encoding the report".into())(std::io::Error::other(e)))?;
    match json {
        Some(path) if path.as_os_str() == "-" => println!("{text}"),
        Some(path) => {
            std::fs::write(path, text + "\n").map_err(io(format!("writing {}", path.display())))?;
            print!("{}", report.to_markdown());
        }
        None => print!("{}", report.to_markdown()),
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                () = ctrl_c => {},
                _ = terminate.recv() => {},
            },
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
