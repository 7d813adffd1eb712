//! Runs the `nft` program (nftables) for the node's packet filters: atomic `nft -f -`
//! transactions, dry-run checks (`nft -c`) and JSON listings of one table. The service
//! proxy (`table ip kaji`) and the network policy controller (`table inet kaji-netpol`)
//! both program the kernel through it; what goes into the tables is theirs.
//!
//! Errors keep apart a missing `nft` (so callers can say which package or flag helps), a
//! failure to run it, and a script `nft` rejected (with its message).
//!
//! Depends on: nothing in the crate (tokio processes only). Must not depend on: `store`,
//! `apiserver`, `client`.

use std::process::{Output, Stdio};

use tokio::io::AsyncWriteExt;

/// Errors running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `nft` is not on `PATH`.
    #[error("nft not found on PATH")]
    NotFound,
    /// Starting `nft` or talking to it failed.
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
    /// `nft` exited unsuccessfully; its standard error, trimmed.
    #[error("nft: {0}")]
    Rejected(String),
}

/// Whether `nft --version` runs and succeeds.
pub async fn available() -> bool {
    tokio::process::Command::new("nft")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|st| st.success())
}

/// Runs `script` as one atomic transaction (`nft -f -`).
pub async fn apply(script: &str) -> Result<(), Error> {
    expect_success(run(&["-f", "-"], Some(script)).await?)
}

/// Checks `script` without applying it (`nft -c -f -`).
pub async fn check(script: &str) -> Result<(), Error> {
    expect_success(run(&["-c", "-f", "-"], Some(script)).await?)
}

/// The JSON listing (`nft -j -t list table <family> <name>`, set elements left out) of
/// one table, or `None` when there is no such table.
pub async fn list_table(family: &str, name: &str) -> Result<Option<Vec<u8>>, Error> {
    let out = run(&["-j", "-t", "list", "table", family, name], None).await?;
    if out.status.success() {
        return Ok(Some(out.stdout));
    }
    let err = stderr_text(&out);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(Error::Rejected(err))
    }
}

/// Runs `nft args`, feeding `stdin` if given; standard error is captured, standard
/// output only when there is no input (listings).
async fn run(args: &[&str], stdin: Option<&str>) -> Result<Output, Error> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if stdin.is_some() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound,
        _ => Error::Io(e),
    })?;
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(script.as_bytes()).await?;
        // Closing stdin ends nft's input.
        drop(pipe);
    }
    Ok(child.wait_with_output().await?)
}

fn expect_success(out: Output) -> Result<(), Error> {
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Rejected(stderr_text(&out)))
    }
}

fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_rejections_and_checks() {
        if !available().await {
            return;
        }
        let cases: &[(&str, bool)] = &[
            ("add table ip kaji-netfilter-test\n", true),
            ("this is not nft\n", false),
        ];
        for (script, ok) in cases {
            match check(script).await {
                Ok(()) => assert!(ok, "{script:?} passed"),
                // Unprivileged runs cannot check against the kernel at all.
                Err(Error::Rejected(e)) if e.contains("Operation not permitted") => return,
                Err(Error::Rejected(e)) => assert!(!ok, "{script:?}: {e}"),
                Err(e) => panic!("{script:?}: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn missing_table_lists_as_none() {
        if !available().await {
            return;
        }
        match list_table("ip", "kaji-netfilter-no-such-table").await {
            Ok(listing) => assert_eq!(listing, None),
            Err(Error::Rejected(e)) if e.contains("Operation not permitted") => {}
            Err(e) => panic!("{e}"),
        }
    }
}
