//! Container images without a registry. Imports image tarballs (OCI image layouts and
//! `docker save` archives, plain or gzip-compressed, streamed: never held in memory) into
//! containerd through its native API, the way `ctr images import` does: blobs into the
//! content store under a lease, garbage-collection labels linking index → manifest →
//! config/layers → snapshot, image records in the `k8s.io` namespace, and the layers
//! unpacked into the `overlayfs` snapshotter, so CRI sees the images as present and runs
//! them. On top of that: kaji's own pause image ([`pause`]), and the air-gap directory
//! `<data-dir>/agent/images/` imported at agent start ([`airgap`]).
//!
//! Depends on: `agent::AgentConfig`, containerd's API (`containerd-client`). Must not
//! depend on: the API server or the store (it is node-local).

pub mod airgap;
pub mod layout;
pub mod pause;
pub mod reference;
pub mod store;
pub mod tar;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use containerd_client::tonic::Code;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};

pub use airgap::import_airgap_images;
use layout::Descriptor;
pub use pause::ensure_pause_image;
use store::Containerd;

/// Label keeping a committed snapshot alive while the config blob that names it lives.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/gc.ref.snapshot.overlayfs";
/// Label recording the uncompressed digest of a layer blob.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// How long an import's lease outlives a crashed kaji.
const LEASE_EXPIRY: Duration = Duration::from_secs(6 * 3600);
/// Largest manifest, index or config accepted.
const MAX_DOCUMENT: u64 = 16 << 20;
/// Small blobs (manifests, configs) are kept in memory while importing, up to this much.
const MAX_KEPT: u64 = 64 << 20;
/// Nested indexes followed at most.
const MAX_INDEX_DEPTH: usize = 4;

/// Errors importing images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// containerd's socket does not answer.
    #[error("connecting to containerd at {socket}: {message}")]
    Connect {
        /// The socket.
        socket: String,
        /// The cause.
        message: String,
    },
    /// A containerd call failed.
    #[error("containerd: {what}: {message}")]
    Rpc {
        /// What kaji was doing.
        what: String,
        /// The gRPC code.
        code: Code,
        /// containerd's message.
        message: String,
    },
    /// The tarball is not a valid tar archive.
    #[error(transparent)]
    Archive(#[from] tar::Error),
    /// A document in the archive is invalid.
    #[error(transparent)]
    Layout(#[from] layout::Error),
    /// An image name is invalid.
    #[error(transparent)]
    Reference(#[from] reference::Error),
    /// The archive is inconsistent or unsupported.
    #[error("{0}")]
    Format(String),
    /// The archive names no image.
    #[error(
        "the archive names no image (no io.containerd.image.name or org.opencontainers.image.ref.name annotation in index.json, no RepoTags in manifest.json)"
    )]
    NoImages,
    /// No manifest of an image is for this machine.
    #[error("{image} has no manifest for {platform}")]
    Platform {
        /// The image.
        image: String,
        /// This machine's platform.
        platform: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Archive(tar::Error::Io(e))
    }
}

/// What an import is doing, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bytes of the tarball (as given, before decompression) read so far.
    Read(u64),
    /// A blob was stored (or was already there).
    Blob {
        /// Its digest.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// Unpacking layer `layer` (1-based) of `layers` of `image`.
    Unpack {
        /// The image.
        image: String,
        /// This layer.
        layer: usize,
        /// All layers.
        layers: usize,
    },
    /// The image is imported and unpacked.
    Imported(String),
}

/// Imports every image of an image tarball (OCI layout or `docker save`, optionally
/// gzip-compressed) into the containerd at `socket` (namespace `k8s.io`), unpacks it for
/// the `overlayfs` snapshotter, and returns the image names (normalised:
/// `busybox:latest` → `docker.io/library/busybox:latest`).
pub async fn import<R>(
    socket: &Path,
    tarball: R,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<Vec<String>, Error>
where
    R: AsyncRead + Unpin + Send,
{
    let mut ctd = Containerd::connect(socket).await?;
    let lease = ctd.create_lease(LEASE_EXPIRY).await?;
    tracing::debug!(%lease, "importing images");
    let result = Importer {
        ctd: ctd.clone(),
        progress: &mut progress,
        kept: HashMap::new(),
        kept_bytes: 0,
    }
    .run(tarball)
    .await;
    if let Err(err) = ctd.delete_lease().await {
        tracing::warn!(%lease, %err, "deleting the import lease (it expires by itself)");
    }
    result
}

/// A stored blob of the archive.
#[derive(Debug, Clone)]
struct Blob {
    digest: String,
    size: u64,
    gzip: bool,
}

struct Importer<'p> {
    ctd: Containerd,
    progress: &'p mut (dyn FnMut(Progress) + Send),
    /// Small blobs by digest, to parse without reading them back.
    kept: HashMap<String, Vec<u8>>,
    kept_bytes: u64,
}

impl Importer<'_> {
    async fn run<R: AsyncRead + Unpin + Send>(mut self, tarball: R) -> Result<Vec<String>, Error> {
        let read = Arc::new(AtomicU64::new(0));
        let mut input = BufReader::with_capacity(
            256 << 10,
            Counting {
                inner: tarball,
                count: read.clone(),
            },
        );
        let head = input.fill_buf().await?;
        let decoded: Pin<Box<dyn AsyncRead + Send + '_>> = if head.starts_with(&[0x1f, 0x8b]) {
            let mut gz = async_compression::tokio::bufread::GzipDecoder::new(input);
            gz.multiple_members(true);
            Box::pin(gz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(Error::Format(
                "zstd-compressed archives are not supported; decompress with `zstd -d` first"
                    .into(),
            ));
        } else {
            Box::pin(input)
        };
        let mut archive = tar::Reader::new(decoded);

        let mut blobs: HashMap<String, Blob> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut index_json: Option<Vec<u8>> = None;
        let mut manifest_json: Option<Vec<u8>> = None;
        let mut buf = vec![0u8; store::CHUNK];
        while let Some(entry) = archive.next_entry().await? {
            match &entry.kind {
                tar::Kind::File if entry.path == "index.json" || entry.path == "manifest.json" => {
                    if entry.size > MAX_DOCUMENT {
                        return Err(Error::Format(format!(
                            "{} is {} bytes",
                            entry.path, entry.size
                        )));
                    }
                    let mut data = vec![0u8; entry.size as usize];
                    archive.read_full(&mut data).await?;
                    if entry.path == "index.json" {
                        index_json = Some(data);
                    } else {
                        manifest_json = Some(data);
                    }
                }
                tar::Kind::File if entry.path == "oci-layout" || entry.path == "repositories" => {}
                tar::Kind::File => {
                    let blob = self
                        .store_entry(&mut archive, &entry, &mut buf, &read)
                        .await?;
                    blobs.insert(entry.path.clone(), blob);
                }
                tar::Kind::Symlink(target) => {
                    links.insert(
                        entry.path.clone(),
                        layout::resolve_link(&entry.path, target),
                    );
                }
                tar::Kind::Link(target) => {
                    links.insert(entry.path.clone(), target.clone());
                }
                tar::Kind::Dir | tar::Kind::Other => {}
            }
            (self.progress)(Progress::Read(read.load(Ordering::Relaxed)));
        }
        // Consume the padding after the end-of-archive marker, so the whole input counts
        // as read.
        tokio::io::copy(&mut archive.into_inner(), &mut tokio::io::sink()).await?;
        (self.progress)(Progress::Read(read.load(Ordering::Relaxed)));

        let images = self
            .images(
                index_json.as_deref(),
                manifest_json.as_deref(),
                &blobs,
                &links,
            )
            .await?;
        let mut unpacked: HashSet<String> = HashSet::new();
        for (name, target) in &images {
            if unpacked.insert(target.digest.clone()) {
                self.unpack(name, target).await?;
            }
        }
        let mut names = Vec::new();
        for (name, target) in images {
            self.ctd.put_image(&name, &target).await?;
            tracing::info!(image = %name, digest = %target.digest, "imported image");
            (self.progress)(Progress::Imported(name.clone()));
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Streams one archive entry into the content store (unless containerd has it),
    /// checking its digest when the path names one.
    async fn store_entry<R: AsyncRead + Unpin>(
        &mut self,
        archive: &mut tar::Reader<R>,
        entry: &tar::Entry,
        buf: &mut [u8],
        read: &AtomicU64,
    ) -> Result<Blob, Error> {
        let expected = layout::blob_path_digest(&entry.path);
        let exists = match &expected {
            Some(d) => self.ctd.content_info(d).await?.is_some(),
            None => false,
        };
        if let Some(d) = expected.as_deref().filter(|_| exists) {
            self.ctd.lease_content(d).await?;
        }
        let mut writer = (!exists).then(|| self.ctd.writer(expected.as_deref(), entry.size));
        let keep = entry.size <= MAX_DOCUMENT && self.kept_bytes + entry.size <= MAX_KEPT;
        let mut kept = Vec::new();
        let mut hasher = Sha256::new();
        let mut remaining = entry.size;
        let mut gzip = None;
        loop {
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let n = archive.read_full(&mut buf[..want]).await?;
            if n < want {
                return Err(Error::Format(format!("{} ends early", entry.path)));
            }
            let chunk = &buf[..n];
            remaining -= n as u64;
            hasher.update(chunk);
            if gzip.is_none() {
                gzip = Some(chunk.starts_with(&[0x1f, 0x8b]));
            }
            if keep {
                kept.extend_from_slice(chunk);
            }
            if remaining == 0 {
                let digest = format!("sha256:{:x}", hasher.finalize_reset());
                if let Some(want) = &expected
                    && *want != digest
                {
                    return Err(Error::Format(format!(
                        "{} holds content with digest {digest}",
                        entry.path
                    )));
                }
                if let Some(w) = writer.take() {
                    w.commit(chunk, &digest).await?;
                }
                if keep {
                    self.kept_bytes += entry.size;
                    self.kept.insert(digest.clone(), kept);
                }
                (self.progress)(Progress::Blob {
                    digest: digest.clone(),
                    size: entry.size,
                });
                return Ok(Blob {
                    digest,
                    size: entry.size,
                    gzip: gzip.unwrap_or(false),
                });
            }
            if let Some(w) = writer.as_mut() {
                w.write(chunk).await?;
            }
            (self.progress)(Progress::Read(read.load(Ordering::Relaxed)));
        }
    }

    /// The images the archive names, with their targets; for `docker save` archives this
    /// writes the OCI manifests kaji makes for them.
    async fn images(
        &mut self,
        index_json: Option<&[u8]>,
        manifest_json: Option<&[u8]>,
        blobs: &HashMap<String, Blob>,
        links: &HashMap<String, String>,
    ) -> Result<Vec<(String, Descriptor)>, Error> {
        let mut images = Vec::new();
        if let Some(bytes) = index_json {
            images = layout::oci_images(&layout::parse_index("index.json", bytes)?)?;
        }
        if images.is_empty()
            && let Some(bytes) = manifest_json
        {
            let resolve = |path: &str| -> Result<Blob, Error> {
                let mut p = path.trim_start_matches("./").to_string();
                for _ in 0..16 {
                    if let Some(b) = blobs.get(&p) {
                        return Ok(b.clone());
                    }
                    match links.get(&p) {
                        Some(next) => p = next.clone(),
                        None => break,
                    }
                }
                Err(Error::Format(format!(
                    "manifest.json names {path}, which is not in the archive"
                )))
            };
            for entry in layout::parse_docker_manifest(bytes)? {
                let config = resolve(&entry.config)?;
                let layers = entry
                    .layers
                    .iter()
                    .map(|l| resolve(l).map(|b| (b.digest, b.size as i64, b.gzip)))
                    .collect::<Result<Vec<_>, _>>()?;
                let manifest =
                    layout::docker_manifest((&config.digest, config.size as i64), &layers);
                let bytes = serde_json::to_vec(&manifest)
                    .map_err(|e| Error::Format(format!("encoding a manifest: {e}")))?;
                let desc = Descriptor {
                    media_type: layout::MEDIA_OCI_MANIFEST.into(),
                    digest: layout::digest_of(&bytes),
                    size: bytes.len() as i64,
                    annotations: BTreeMap::new(),
                    platform: None,
                };
                self.ctd.write_blob(&desc.digest, &bytes).await?;
                self.kept.insert(desc.digest.clone(), bytes);
                let tags = entry.repo_tags.unwrap_or_default();
                if tags.is_empty() {
                    tracing::warn!(config = %entry.config, "skipping an untagged image of the archive");
                }
                for tag in tags {
                    images.push((reference::normalize(&tag)?, desc.clone()));
                }
            }
        }
        if images.is_empty() {
            return Err(Error::NoImages);
        }
        Ok(images)
    }

    /// A manifest, index or config blob.
    async fn document(&self, digest: &str) -> Result<Vec<u8>, Error> {
        match self.kept.get(digest) {
            Some(b) => Ok(b.clone()),
            None => self.ctd.read_blob(digest, MAX_DOCUMENT as i64).await,
        }
    }

    /// Labels the image's blobs for garbage collection and unpacks the layers of its
    /// manifest for this machine.
    async fn unpack(&mut self, name: &str, target: &Descriptor) -> Result<(), Error> {
        let host = layout::host_platform();
        let mut desc = target.clone();
        for _ in 0..MAX_INDEX_DEPTH {
            if !layout::is_index(&desc.media_type) {
                break;
            }
            let index = layout::parse_index(&desc.digest, &self.document(&desc.digest).await?)?;
            let mut labels = Vec::new();
            for (i, child) in index.manifests.iter().enumerate() {
                if self.kept.contains_key(&child.digest)
                    || self.ctd.content_info(&child.digest).await?.is_some()
                {
                    labels.push((
                        format!("containerd.io/gc.ref.content.m.{i}"),
                        child.digest.clone(),
                    ));
                }
            }
            self.ctd.set_labels(&desc.digest, &labels).await?;
            desc = layout::select_manifest(&index, &host)
                .cloned()
                .ok_or_else(|| Error::Platform {
                    image: name.to_string(),
                    platform: format!("{}/{}", host.os, host.architecture),
                })?;
        }
        if !layout::is_manifest(&desc.media_type) {
            return Err(Error::Format(format!(
                "{name}: unsupported manifest media type {:?}",
                desc.media_type
            )));
        }
        let manifest = layout::parse_manifest(&desc.digest, &self.document(&desc.digest).await?)?;
        let mut labels = vec![(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        )];
        for (i, layer) in manifest.layers.iter().enumerate() {
            labels.push((
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest.clone(),
            ));
        }
        self.ctd.set_labels(&desc.digest, &labels).await?;

        let config = layout::parse_config(
            &manifest.config.digest,
            &self.document(&manifest.config.digest).await?,
        )?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::Format(format!(
                "{name}: the manifest has {} layers but the config lists {} diff IDs",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let chains = layout::chain_ids(diff_ids);
        let mut parent = String::new();
        for (i, layer) in manifest.layers.iter().enumerate() {
            (self.progress)(Progress::Unpack {
                image: name.to_string(),
                layer: i + 1,
                layers: manifest.layers.len(),
            });
            let chain = &chains[i];
            if !self.ctd.snapshot_exists(chain).await? {
                self.apply_layer(name, layer, &diff_ids[i], chain, &parent)
                    .await?;
            }
            parent = chain.clone();
        }
        if let Some(top) = chains.last() {
            self.ctd
                .set_labels(
                    &manifest.config.digest,
                    &[(LABEL_SNAPSHOT_REF.to_string(), top.clone())],
                )
                .await?;
        }
        Ok(())
    }

    /// Applies one layer on `parent` and commits it as `chain`.
    async fn apply_layer(
        &self,
        name: &str,
        layer: &Descriptor,
        diff_id: &str,
        chain: &str,
        parent: &str,
    ) -> Result<(), Error> {
        if self.ctd.content_info(&layer.digest).await?.is_none() {
            return Err(Error::Format(format!(
                "{name}: layer {} is neither in the archive nor in containerd",
                layer.digest
            )));
        }
        let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
        let mounts = self.ctd.prepare(&key, parent).await?;
        let applied = match self.ctd.apply(layer, mounts).await {
            Ok(d) => d,
            Err(e) => {
                let _ = self.ctd.remove_snapshot(&key).await;
                return Err(e);
            }
        };
        if applied != diff_id {
            let _ = self.ctd.remove_snapshot(&key).await;
            return Err(Error::Format(format!(
                "{name}: layer {} unpacks to {applied}, but the config says {diff_id}",
                layer.digest
            )));
        }
        if !self.ctd.commit(chain, &key).await? {
            // Someone unpacked the same layer meanwhile.
            self.ctd.remove_snapshot(&key).await?;
        }
        self.ctd
            .set_labels(
                &layer.digest,
                &[(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())],
            )
            .await?;
        tracing::debug!(image = %name, layer = %layer.digest, %chain, "unpacked layer");
        Ok(())
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        res
    }
}

/// What the agent does with images at start, once its containerd answers: imports kaji's
/// pause image (when the agent uses the default one) and then the air-gap directory.
/// A broken air-gap archive is logged and skipped; failing to provide the pause image is
/// an error (no pod could start).
pub async fn prepare_node_images(
    cfg: &crate::agent::AgentConfig,
    socket: &Path,
) -> Result<(), Error> {
    if cfg.pause_image == crate::agent::DEFAULT_PAUSE_IMAGE {
        ensure_pause_image(socket, &cfg.pause_image).await?;
    }
    match import_airgap_images(cfg, socket).await {
        Ok(images) if !images.is_empty() => tracing::info!(?images, "air-gap images imported"),
        Ok(_) => {}
        Err(err) => tracing::error!(%err, "importing air-gap images"),
    }
    if !wait_for_cri(socket, &cfg.pause_image, Duration::from_secs(10)).await? {
        tracing::warn!(image = %cfg.pause_image, "CRI does not report the pause image yet");
    }
    Ok(())
}

/// Waits up to `timeout` until CRI's image service reports `image` present (containerd's
/// CRI plugin learns of imported images from containerd's events, a moment later);
/// returns whether it did.
pub async fn wait_for_cri(socket: &Path, image: &str, timeout: Duration) -> Result<bool, Error> {
    use k8s_cri::v1::{ImageSpec, ImageStatusRequest, image_service_client::ImageServiceClient};
    let channel = containerd_client::connect(socket)
        .await
        .map_err(|e| Error::Connect {
            socket: socket.display().to_string(),
            message: e.to_string(),
        })?;
    let mut client = ImageServiceClient::new(channel);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        match client.image_status(req).await {
            Ok(r) if r.get_ref().image.is_some() => return Ok(true),
            Ok(_) => {}
            Err(s) => {
                return Err(Error::Rpc {
                    what: format!("CRI ImageStatus {image}"),
                    code: s.code(),
                    message: s.message().to_string(),
                });
            }
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The containerd socket of the agent whose data dir is `data_dir`, or of the
/// `--container-runtime-endpoint` given (`unix:///path` or a path).
pub fn socket_path(data_dir: &Path, endpoint: Option<&str>) -> std::path::PathBuf {
    match endpoint {
        Some(e) => std::path::PathBuf::from(e.strip_prefix("unix://").unwrap_or(e)),
        None => super::default_run_dir(data_dir).join("containerd/containerd.sock"),
    }
}
