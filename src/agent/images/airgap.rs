//! The air-gap image directory `<data-dir>/agent/images/`: every `*.tar`, `*.tar.gz` and
//! `*.tgz` there (OCI layouts or `docker save` archives) is imported into containerd at
//! agent start, as k3s does. `<data-dir>/agent/airgap-images.json` remembers each imported
//! file's size, modification time, SHA-256 and image names, so a restart skips files
//! already imported as long as containerd still has their images (the directory itself
//! may be read-only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::Error;
use super::store::Containerd;
use crate::agent::AgentConfig;

/// Name of the state file, in `<data-dir>/agent/`.
pub const STATE_FILE: &str = "airgap-images.json";

/// `<data-dir>/agent/images`.
pub fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("images")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    files: BTreeMap<String, FileRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileRecord {
    size: u64,
    mtime_ns: u64,
    sha256: String,
    images: Vec<String>,
}

/// Whether a file name is an image archive kaji imports: `Some(true)` yes,
/// `Some(false)` a compressed format kaji does not read, `None` not an archive.
fn archive_kind(name: &str) -> Option<bool> {
    if name.starts_with('.') {
        return None;
    }
    if name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(true)
    } else if name.ends_with(".tar.zst")
        || name.ends_with(".tar.zstd")
        || name.ends_with(".tar.bz2")
        || name.ends_with(".tar.xz")
    {
        Some(false)
    } else {
        None
    }
}

/// Imports the agent's air-gap images into the containerd at `socket`; returns the image
/// names imported now. A file that fails is logged and skipped (the others still count),
/// and retried at the next start.
pub async fn import_airgap_images(cfg: &AgentConfig, socket: &Path) -> Result<Vec<String>, Error> {
    import_dir(
        &images_dir(&cfg.data_dir),
        &cfg.data_dir.join("agent").join(STATE_FILE),
        socket,
    )
    .await
}

/// Imports the archives of `dir`, remembering them in `state_path`.
pub async fn import_dir(
    dir: &Path,
    state_path: &Path,
    socket: &Path,
) -> Result<Vec<String>, Error> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    let _ = std::fs::create_dir_all(dir);
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut files = Vec::new();
    for entry in listing {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match archive_kind(&name) {
            Some(true) => files.push(name),
            Some(false) => {
                tracing::warn!(file = %entry.path().display(), "skipping an image archive in an unsupported compression (use .tar or .tar.gz)")
            }
            None => {}
        }
    }
    files.sort();
    let mut state = load_state(state_path);
    state.files.retain(|name, _| files.contains(name));
    if files.is_empty() {
        save_state(state_path, &state)?;
        return Ok(Vec::new());
    }
    let ctd = Containerd::connect(socket).await?;
    let mut imported = Vec::new();
    for name in files {
        let path = dir.join(&name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping an air-gap image archive");
                continue;
            }
        };
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        if let Some(rec) = state.files.get(&name).cloned()
            && rec.size == meta.len()
            && all_present(&ctd, &rec.images).await?
        {
            if rec.mtime_ns == mtime_ns {
                tracing::debug!(file = %path.display(), "air-gap image archive already imported");
                continue;
            }
            // Touched or copied anew: the same bytes need no import.
            if file_sha256(&path).await.ok().as_deref() == Some(rec.sha256.as_str()) {
                state
                    .files
                    .insert(name.clone(), FileRecord { mtime_ns, ..rec });
                save_state(state_path, &state)?;
                continue;
            }
        }
        let started = std::time::Instant::now();
        match import_file(&path, socket).await {
            Ok((images, sha256)) => {
                tracing::info!(file = %path.display(), images = ?images, elapsed_ms = started.elapsed().as_millis() as u64, "imported air-gap images");
                state.files.insert(
                    name,
                    FileRecord {
                        size: meta.len(),
                        mtime_ns,
                        sha256,
                        images: images.clone(),
                    },
                );
                save_state(state_path, &state)?;
                imported.extend(images);
            }
            Err(err) => {
                tracing::error!(file = %path.display(), %err, "importing air-gap images failed")
            }
        }
    }
    Ok(imported)
}

async fn all_present(ctd: &Containerd, images: &[String]) -> Result<bool, Error> {
    for image in images {
        if ctd.get_image(image).await?.is_none() {
            return Ok(false);
        }
    }
    Ok(!images.is_empty())
}

/// Imports one archive; returns its images and the SHA-256 of the file.
async fn import_file(path: &Path, socket: &Path) -> Result<(Vec<String>, String), Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut hashing = Hashing {
        inner: file,
        hasher: Sha256::new(),
    };
    let images = super::import(socket, &mut hashing, |_| {}).await?;
    // Hash what the importer left unread (the archive's trailing padding).
    tokio::io::copy(&mut hashing, &mut tokio::io::sink())
        .await
        .map_err(io)?;
    Ok((images, format!("{:x}", hashing.hasher.finalize())))
}

async fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(format!("{:x}", hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn load_state(path: &Path) -> State {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            tracing::warn!(file = %path.display(), %err, "ignoring an unreadable air-gap state file");
            State::default()
        }),
        Err(_) => State::default(),
    }
}

fn save_state(path: &Path, state: &State) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Format(format!("encoding the air-gap state: {e}")))?;
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Hashes every byte read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Self { hasher, .. } = &mut *self;
        hasher.update(&buf.filled()[before..]);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        let cases = [
            ("busybox.tar", Some(true)),
            ("app.tar.gz", Some(true)),
            ("app.tgz", Some(true)),
            ("app.tar.zst", Some(false)),
            ("app.tar.xz", Some(false)),
            (".hidden.tar", None),
            ("notes.txt", None),
            ("app.tar.partial", None),
        ];
        for (name, want) in cases {
            assert_eq!(archive_kind(name), want, "{name}");
        }
    }

    #[test]
    fn state_round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent").join(STATE_FILE);
        assert!(load_state(&path).files.is_empty());
        let mut state = State::default();
        let rec = FileRecord {
            size: 10,
            mtime_ns: 20,
            sha256: "ab".into(),
            images: vec!["docker.io/library/busybox:latest".into()],
        };
        state.files.insert("bb.tar".into(), rec.clone());
        save_state(&path, &state).unwrap();
        assert_eq!(load_state(&path).files.get("bb.tar"), Some(&rec));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_state(&path).files.is_empty());
    }

    #[tokio::test]
    async fn hashing_reader_hashes_everything_read() {
        let data = vec![5u8; 300_000];
        let mut r = Hashing {
            inner: &data[..],
            hasher: Sha256::new(),
        };
        let mut head = [0u8; 1000];
        r.read_exact(&mut head).await.unwrap();
        tokio::io::copy(&mut r, &mut tokio::io::sink())
            .await
            .unwrap();
        assert_eq!(
            format!("{:x}", r.hasher.finalize()),
            format!("{:x}", Sha256::digest(&data))
        );
    }
}
