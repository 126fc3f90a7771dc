//! `with-redis COMMAND [ARGS...]`: runs a command beside a throwaway `redis-server`, for the
//! shell scripts that need one (`scripts/bench-redis.sh`, `load/http-compare.sh`).
//!
//! The server is the test harness's `RedisServer`: a free loopback port, no persistence, its
//! own temporary directory, and killed with this program however it ends (`PR_SET_PDEATHSIG`,
//! even on `kill -9`). The command runs with `THROWAWAY_REDIS_URL` (`redis://127.0.0.1:PORT`)
//! and `THROWAWAY_REDIS_PORT` set; once it ends, the server is stopped and `with-redis` exits
//! with the command's status (128 + N if a signal N ended it).
//!
//! A Ctrl-C in the terminal reaches the whole process group (the command and the server too):
//! `with-redis` waits for the command to finish and exits with its status. SIGTERM sent to
//! `with-redis` alone kills the command.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};

use clap::Parser;
use ratelimit_tests::RedisServer;
use tokio::signal::unix::{SignalKind, signal};

/// Runs a command beside a throwaway redis-server, with THROWAWAY_REDIS_URL and
/// THROWAWAY_REDIS_PORT set to it; exits with the command's status.
#[derive(Debug, Parser)]
#[command(name = "with-redis")]
struct Args {
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Panics with the server's log if it cannot start.
    let server = RedisServer::start();
    let code = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(&args.command, &server)),
        Err(e) => {
            eprintln!("with-redis: cannot start a runtime: {e}");
            ExitCode::FAILURE
        }
    };
    drop(server);
    code
}

async fn run(command: &[OsString], server: &RedisServer) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        return ExitCode::from(2);
    };
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .env("THROWAWAY_REDIS_URL", server.url())
        .env("THROWAWAY_REDIS_PORT", server.port().to_string())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("with-redis: cannot run {}: {e}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(e) => {
            eprintln!("with-redis: cannot watch for SIGTERM: {e}");
            let _ = child.kill().await;
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => exit_code(status),
                    Err(e) => {
                        eprintln!("with-redis: waiting for {}: {e}", program.to_string_lossy());
                        ExitCode::FAILURE
                    }
                };
            }
            // The command got the same Ctrl-C: let it finish.
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {
                let _ = child.start_kill();
            }
        }
    }
}

/// The command's exit code, or 128 + the signal that ended it, as a shell reports it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
