//! Finding the api-server binary when none is given: a release build with cargo, whose JSON
//! messages name the executable (wherever the target directory is).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::error::LoadError;

/// Builds `example-api-server` in release mode and returns the path of its `api-server`
/// binary. Cargo's progress goes to stderr.
pub async fn build_api_server() -> Result<PathBuf, LoadError> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| LoadError::Build("the load crate has no parent directory".into()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = tokio::process::Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "example-api-server",
            "--bin",
            "api-server",
        ])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| LoadError::Spawn {
            program: cargo.clone().into(),
            source,
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| LoadError::Build("cargo's output was not captured".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut executable = None;
    let read_error = |source| LoadError::Io {
        what: "reading cargo's output".into(),
        source,
    };
    while let Some(line) = lines.next_line().await.map_err(read_error)? {
        if let Some(path) = api_server_executable(&line) {
            executable = Some(path);
        }
    }
    let status = child.wait().await.map_err(read_error)?;
    if !status.success() {
        return Err(LoadError::Build(format!("cargo build {status}")));
    }
    executable.ok_or_else(|| LoadError::Build("cargo did not report the api-server binary".into()))
}

/// The `executable` of a `compiler-artifact` message about the `api-server` binary.
fn api_server_executable(line: &str) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["target"]["name"] != "api-server" {
        return None;
    }
    message["executable"].as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_comes_from_the_api_server_artifact() {
        let artifact = r#"{"reason":"compiler-artifact","target":{"name":"api-server","kind":["bin"]},"executable":"/t/release/api-server"}"#;
        let library = r#"{"reason":"compiler-artifact","target":{"name":"ratelimit_core","kind":["lib"]},"executable":null}"#;
        assert_eq!(
            api_server_executable(artifact),
            Some(PathBuf::from("/t/release/api-server"))
        );
        assert_eq!(api_server_executable(library), None);
        assert_eq!(api_server_executable("not json"), None);
    }
}
