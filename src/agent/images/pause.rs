//! kaji's own sandbox ("pause") image, so pods start without a registry: the build
//! compiles `embedded/pause/pause.c` (a freestanding static program that holds the pod's
//! namespaces, reaps orphans and exits 0 on SIGINT/SIGTERM) and embeds it; at agent start
//! the image is assembled in memory (one layer with `/pause`, entrypoint `["/pause"]`, this
//! machine's platform) and imported unless containerd already has exactly that image.

use std::path::Path;

use super::layout::{self, BuiltImage, File};
use super::store::Containerd;
use super::{Error, reference};

/// The pause program for this machine's architecture.
pub const PAUSE_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// The pause image, named `name`, built in memory (the same bytes every time).
pub fn pause_image(name: &str) -> Result<BuiltImage, Error> {
    if PAUSE_PROGRAM.is_empty() {
        return Err(Error::Format(
            "this build of kaji has no pause program (unsupported architecture)".into(),
        ));
    }
    Ok(layout::build_image(
        name,
        &[File::Regular("pause", 0o755, PAUSE_PROGRAM)],
        &["/pause"],
    )?)
}

/// Imports kaji's pause image as `name` into the containerd at `socket` unless it is
/// there already (same manifest, layer unpacked); returns whether it imported it.
pub async fn ensure_pause_image(socket: &Path, name: &str) -> Result<bool, Error> {
    let image = pause_image(name)?;
    let name = reference::normalize(name)?;
    let ctd = Containerd::connect(socket).await?;
    let current = ctd
        .get_image(&name)
        .await?
        .and_then(|i| i.target)
        .map(|t| t.digest);
    if current.as_deref() == Some(image.manifest.digest.as_str())
        && ctd.snapshot_exists(&image.diff_id).await?
    {
        tracing::debug!(image = %name, "pause image present");
        return Ok(false);
    }
    super::import(socket, &image.archive[..], |_| {}).await?;
    tracing::info!(image = %name, digest = %image.manifest.digest, "imported the built-in pause image");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_program_is_a_static_executable_for_this_machine() {
        assert!(PAUSE_PROGRAM.starts_with(b"\x7fELF"), "an ELF file");
        assert!(
            PAUSE_PROGRAM.len() < 64 << 10,
            "tiny: {} bytes",
            PAUSE_PROGRAM.len()
        );
        // e_machine at offset 18: 0x3e x86_64, 0xb7 aarch64.
        let machine = u16::from_le_bytes([PAUSE_PROGRAM[18], PAUSE_PROGRAM[19]]);
        let want = if cfg!(target_arch = "x86_64") {
            0x3e
        } else {
            0xb7
        };
        assert_eq!(machine, want);
        // No program interpreter (PT_INTERP = 3): statically linked.
        let phoff = u64::from_le_bytes(PAUSE_PROGRAM[32..40].try_into().unwrap()) as usize;
        let phentsize = u16::from_le_bytes([PAUSE_PROGRAM[54], PAUSE_PROGRAM[55]]) as usize;
        let phnum = u16::from_le_bytes([PAUSE_PROGRAM[56], PAUSE_PROGRAM[57]]) as usize;
        for i in 0..phnum {
            let off = phoff + i * phentsize;
            let kind = u32::from_le_bytes(PAUSE_PROGRAM[off..off + 4].try_into().unwrap());
            assert_ne!(kind, 3, "the pause program must not need a dynamic loader");
        }
    }

    #[test]
    fn the_pause_program_exits_0_on_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pause");
        std::fs::write(&path, PAUSE_PROGRAM).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "pause keeps running");
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "pause: shutting down\n"
        );
    }

    #[test]
    fn pause_image_is_reproducible() {
        let a = pause_image("kaji.local/pause:3.10").unwrap();
        let b = pause_image("kaji.local/pause:3.10").unwrap();
        assert_eq!(a.manifest.digest, b.manifest.digest);
        assert_eq!(a.archive, b.archive);
        // The name lives in index.json only: another name, the same image.
        let other = pause_image("registry.example.com/pause:1").unwrap();
        assert_eq!(other.manifest, a.manifest);
        assert_ne!(other.archive, a.archive);
    }
}
