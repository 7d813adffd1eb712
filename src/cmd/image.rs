//! `kaji image import FILE...`: imports image tarballs into the running agent's
//! containerd (its socket derived from `--data-dir` as the agent does, or
//! `--container-runtime-endpoint`), with a progress bar on a terminal.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::agent::images::{self, Progress};
use crate::config::{ImageArgs, ImageCommand, ImageImportArgs};

/// Runs `kaji image ...`.
pub async fn run(args: ImageArgs) -> anyhow::Result<()> {
    // Warnings only by default: the progress bar is the output.
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAJI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match args.command {
        ImageCommand::Import(a) => import(a).await,
    }
}

async fn import(args: ImageImportArgs) -> anyhow::Result<()> {
    let socket = images::socket_path(&args.data_dir, args.container_runtime_endpoint.as_deref());
    if !socket.exists() {
        anyhow::bail!(
            "no containerd socket at {} (is the kaji agent running with --data-dir {}? or pass --container-runtime-endpoint)",
            socket.display(),
            args.data_dir.display()
        );
    }
    let mut sizes = Vec::new();
    for file in &args.files {
        let meta = std::fs::metadata(file).with_context(|| format!("{}", file.display()))?;
        sizes.push(meta.len());
    }
    let bar = ProgressBar::with_draw_target(Some(sizes.iter().sum()), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut done_before = 0u64;
    let mut all = Vec::new();
    for (file, size) in args.files.iter().zip(sizes) {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bar.set_message(format!("reading {name}"));
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("{}", file.display()))?;
        let result = images::import(&socket, f, |p| match p {
            Progress::Read(n) => bar.set_position(done_before + n.min(size)),
            Progress::Unpack {
                image,
                layer,
                layers,
            } => bar.set_message(format!("unpacking {image} (layer {layer}/{layers})")),
            Progress::Imported(image) => bar.println(format!("imported {image}")),
            Progress::Blob { .. } => {}
        })
        .await;
        done_before += size;
        bar.set_position(done_before);
        match result {
            Ok(names) => all.extend(names),
            Err(e) => {
                bar.abandon_with_message(format!("failed: {name}"));
                return Err(e).with_context(|| format!("importing {}", file.display()));
            }
        }
    }
    bar.finish_and_clear();
    for name in &all {
        println!("{name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::{Cli, Command, ImageCommand};

    #[test]
    fn parses_image_import() {
        let cli = Cli::parse_from([
            "kaji",
            "image",
            "import",
            "a.tar",
            "b.tar.gz",
            "--data-dir",
            "/srv/kaji",
        ]);
        let Command::Image(args) = cli.command else {
            panic!("image")
        };
        let ImageCommand::Import(i) = args.command;
        assert_eq!(
            i.files,
            vec![std::path::PathBuf::from("a.tar"), "b.tar.gz".into()]
        );
        assert_eq!(
            crate::agent::images::socket_path(&i.data_dir, i.container_runtime_endpoint.as_deref()),
            std::path::PathBuf::from("/srv/kaji/run/containerd/containerd.sock")
        );
        let cli = Cli::parse_from([
            "kaji",
            "image",
            "import",
            "x.tar",
            "--container-runtime-endpoint",
            "unix:///run/containerd/containerd.sock",
        ]);
        let Command::Image(args) = cli.command else {
            panic!("image")
        };
        let ImageCommand::Import(i) = args.command;
        assert_eq!(
            crate::agent::images::socket_path(&i.data_dir, i.container_runtime_endpoint.as_deref()),
            std::path::PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            crate::agent::images::socket_path(std::path::Path::new("/var/lib/kaji"), None),
            std::path::PathBuf::from("/run/kaji/containerd/containerd.sock")
        );
        assert!(
            Cli::try_parse_from(["kaji", "image", "import"]).is_err(),
            "a file is required"
        );
    }
}
