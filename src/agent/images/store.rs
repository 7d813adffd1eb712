//! containerd's native gRPC API, as far as image import needs it: the content store
//! (streaming writes with the expected digest, labels), leases (so garbage collection
//! keeps half-imported content and snapshots), image records, snapshots and the diff
//! applier. Every request carries the `k8s.io` namespace (where CRI looks) and the
//! import's lease.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AddResourceRequest, ApplyRequest, CreateImageRequest, CreateRequest, DeleteRequest,
    GetImageRequest, Image, Info, InfoRequest, ReadContentRequest, Resource, UpdateImageRequest,
    UpdateRequest, WriteAction, WriteContentRequest, WriteContentResponse,
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{self, Code, Request, Streaming};
use containerd_client::types::{Descriptor as ApiDescriptor, Mount};
use futures::SinkExt;
use futures::channel::mpsc;

use super::Error;
use super::layout::Descriptor;

/// The containerd namespace CRI uses.
pub const NAMESPACE: &str = "k8s.io";
/// The snapshotter kaji's containerd configuration selects.
pub const SNAPSHOTTER: &str = "overlayfs";
/// Bytes per content write message (containerd accepts up to 4 MiB).
pub const CHUNK: usize = 1 << 20;

fn rpc(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> Error {
    let what = what.into();
    move |status| Error::Rpc {
        what,
        code: status.code(),
        message: status.message().to_string(),
    }
}

/// A connection to containerd, bound to a namespace and (optionally) a lease.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    lease: Option<String>,
}

impl Containerd {
    /// Connects to containerd's socket.
    pub async fn connect(socket: &Path) -> Result<Containerd, Error> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| Error::Connect {
                socket: socket.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(Containerd {
            channel,
            lease: None,
        })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        md.insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static(NAMESPACE),
        );
        if let Some(lease) = &self.lease
            && let Ok(v) = lease.parse()
        {
            md.insert("containerd-lease", v);
        }
        req
    }

    /// Creates a lease that expires by itself after `expiry` (should kaji die mid-import)
    /// and makes every later request of this connection hold its resources.
    pub async fn create_lease(&mut self, expiry: Duration) -> Result<String, Error> {
        let id = format!("kaji-import-{}", uuid::Uuid::new_v4());
        let expire = jiff::Timestamp::try_from(SystemTime::now() + expiry)
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let labels = HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            expire.to_string(), // RFC 3339, UTC
        )]);
        LeasesClient::new(self.channel.clone())
            .create(self.request(CreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(rpc("creating a lease"))?;
        self.lease = Some(id.clone());
        Ok(id)
    }

    /// Deletes the lease; what it held is collectable now unless something references it.
    pub async fn delete_lease(&mut self) -> Result<(), Error> {
        if let Some(id) = self.lease.take() {
            LeasesClient::new(self.channel.clone())
                .delete(self.request(DeleteRequest { id, sync: false }))
                .await
                .map_err(rpc("deleting the import lease"))?;
        }
        Ok(())
    }

    /// Adds existing content to the lease, so it cannot be collected before the image
    /// that references it is recorded.
    pub async fn lease_content(&self, digest: &str) -> Result<(), Error> {
        let Some(id) = self.lease.clone() else {
            return Ok(());
        };
        let resource = Resource {
            id: digest.to_string(),
            r#type: "content".into(),
        };
        LeasesClient::new(self.channel.clone())
            .add_resource(self.request(AddResourceRequest {
                id,
                resource: Some(resource),
            }))
            .await
            .map_err(rpc(format!("leasing {digest}")))?;
        Ok(())
    }

    /// The content store's record of a blob, if it has it.
    pub async fn content_info(&self, digest: &str) -> Result<Option<Info>, Error> {
        match ContentClient::new(self.channel.clone())
            .info(self.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc(format!("looking up {digest}"))(s)),
        }
    }

    /// Sets labels on a blob, keeping its other labels.
    pub async fn set_labels(&self, digest: &str, labels: &[(String, String)]) -> Result<(), Error> {
        if labels.is_empty() {
            return Ok(());
        }
        let info = Info {
            digest: digest.to_string(),
            labels: labels.iter().cloned().collect(),
            ..Default::default()
        };
        let mask = prost_types::FieldMask {
            paths: labels.iter().map(|(k, _)| format!("labels.{k}")).collect(),
        };
        ContentClient::new(self.channel.clone())
            .update(self.request(UpdateRequest {
                info: Some(info),
                update_mask: Some(mask),
            }))
            .await
            .map_err(rpc(format!("labelling {digest}")))?;
        Ok(())
    }

    /// Reads a whole blob (manifests and configs: small), refusing ones over `max` bytes.
    pub async fn read_blob(&self, digest: &str, max: i64) -> Result<Vec<u8>, Error> {
        let info = self.content_info(digest).await?.ok_or_else(|| {
            Error::Format(format!(
                "blob {digest} is neither in the archive nor in containerd"
            ))
        })?;
        if info.size > max {
            return Err(Error::Format(format!(
                "blob {digest} is {} bytes; a manifest or config is at most {max}",
                info.size
            )));
        }
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(rpc(format!("reading {digest}")))?
            .into_inner();
        let mut out = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
        while let Some(msg) = stream
            .message()
            .await
            .map_err(rpc(format!("reading {digest}")))?
        {
            out.extend_from_slice(&msg.data);
        }
        Ok(out)
    }

    /// Starts writing a blob of `total` bytes; `expected` is its digest when known up
    /// front (the caller checks first whether containerd already has it).
    pub fn writer(&self, expected: Option<&str>, total: u64) -> Writer {
        Writer {
            client: ContentClient::new(self.channel.clone()),
            conn: self.clone(),
            reference: format!("kaji-import-{}", uuid::Uuid::new_v4()),
            expected: expected.map(str::to_string),
            total,
            offset: 0,
            exists: false,
            stream: None,
        }
    }

    /// Writes a small blob in one message (no-op if containerd has it).
    pub async fn write_blob(&self, digest: &str, data: &[u8]) -> Result<(), Error> {
        if self.content_info(digest).await?.is_some() {
            return self.lease_content(digest).await;
        }
        self.writer(Some(digest), data.len() as u64)
            .commit(data, digest)
            .await
    }

    /// The image record named `name`.
    pub async fn get_image(&self, name: &str) -> Result<Option<Image>, Error> {
        match ImagesClient::new(self.channel.clone())
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc(format!("looking up image {name}"))(s)),
        }
    }

    /// Creates the image record `name` → `target`, or points an existing one at `target`
    /// (clearing its labels, so CRI re-reads it as a new image).
    pub async fn put_image(&self, name: &str, target: &Descriptor) -> Result<(), Error> {
        let image = Image {
            name: name.to_string(),
            target: Some(api_descriptor(target)),
            ..Default::default()
        };
        let mut client = ImagesClient::new(self.channel.clone());
        match client
            .create(self.request(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let mask = prost_types::FieldMask {
                    paths: vec!["target".into(), "labels".into()],
                };
                client
                    .update(self.request(UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(mask),
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(rpc(format!("updating image {name}")))?;
                Ok(())
            }
            Err(s) => Err(rpc(format!("creating image {name}"))(s)),
        }
    }

    /// Whether the snapshotter has a snapshot with this key or name.
    pub async fn snapshot_exists(&self, key: &str) -> Result<bool, Error> {
        let req = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        };
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.request(req))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(rpc(format!("looking up snapshot {key}"))(s)),
        }
    }

    /// Prepares an active snapshot `key` on top of `parent` ("" for none).
    pub async fn prepare(&self, key: &str, parent: &str) -> Result<Vec<Mount>, Error> {
        let req = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
            parent: parent.into(),
            ..Default::default()
        };
        Ok(SnapshotsClient::new(self.channel.clone())
            .prepare(self.request(req))
            .await
            .map_err(rpc(format!("preparing snapshot on {parent:?}")))?
            .into_inner()
            .mounts)
    }

    /// Commits the active snapshot `key` as `name`; `false` if `name` already exists.
    pub async fn commit(&self, name: &str, key: &str) -> Result<bool, Error> {
        let req = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: name.into(),
            key: key.into(),
            ..Default::default()
        };
        match SnapshotsClient::new(self.channel.clone())
            .commit(self.request(req))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::AlreadyExists => Ok(false),
            Err(s) => Err(rpc(format!("committing snapshot {name}"))(s)),
        }
    }

    /// Removes a snapshot.
    pub async fn remove_snapshot(&self, key: &str) -> Result<(), Error> {
        let req = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        SnapshotsClient::new(self.channel.clone())
            .remove(self.request(req))
            .await
            .map_err(rpc(format!("removing snapshot {key}")))?;
        Ok(())
    }

    /// Applies a layer to mounts; returns the digest of the uncompressed layer.
    pub async fn apply(&self, layer: &Descriptor, mounts: Vec<Mount>) -> Result<String, Error> {
        let req = ApplyRequest {
            diff: Some(api_descriptor(layer)),
            mounts,
            ..Default::default()
        };
        let applied = DiffClient::new(self.channel.clone())
            .apply(self.request(req))
            .await
            .map_err(rpc(format!("applying layer {}", layer.digest)))?
            .into_inner()
            .applied;
        Ok(applied.map(|d| d.digest).unwrap_or_default())
    }
}

fn api_descriptor(d: &Descriptor) -> ApiDescriptor {
    ApiDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        ..Default::default()
    }
}

/// A blob being written to the content store: one gRPC stream, one message per chunk,
/// each answered before the next is sent (so flow control never stalls).
pub struct Writer {
    client: ContentClient<Channel>,
    conn: Containerd,
    reference: String,
    expected: Option<String>,
    total: u64,
    offset: u64,
    /// containerd turned out to have the blob (in another namespace, shared with this
    /// one): the rest of the data needs no writing.
    exists: bool,
    stream: Option<(
        mpsc::Sender<WriteContentRequest>,
        Streaming<WriteContentResponse>,
    )>,
}

impl Writer {
    /// Writes the next chunk.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.exists {
            return Ok(());
        }
        match self.send(WriteAction::Write, data, None).await {
            Ok(_) => Ok(()),
            Err(Error::Rpc {
                code: Code::AlreadyExists,
                ..
            }) if self.expected.is_some() => {
                self.exists = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the last chunk and commits the blob as `digest` (which containerd checks);
    /// a blob that appeared meanwhile counts as written.
    pub async fn commit(mut self, data: &[u8], digest: &str) -> Result<(), Error> {
        if self.exists {
            return self.conn.lease_content(digest).await;
        }
        match self.send(WriteAction::Commit, data, Some(digest)).await {
            Ok(_) => Ok(()),
            Err(Error::Rpc {
                code: Code::AlreadyExists,
                ..
            }) => self.conn.lease_content(digest).await,
            Err(e) => Err(e),
        }
    }

    async fn send(
        &mut self,
        action: WriteAction,
        data: &[u8],
        digest: Option<&str>,
    ) -> Result<WriteContentResponse, Error> {
        let what = || {
            format!(
                "writing {}",
                digest.or(self.expected.as_deref()).unwrap_or("a blob")
            )
        };
        let req = WriteContentRequest {
            action: action as i32,
            r#ref: self.reference.clone(),
            total: i64::try_from(self.total).unwrap_or(i64::MAX),
            expected: digest
                .map(str::to_string)
                .or_else(|| self.expected.clone())
                .unwrap_or_default(),
            offset: i64::try_from(self.offset).unwrap_or(i64::MAX),
            data: data.to_vec(),
            ..Default::default()
        };
        if self.stream.is_none() {
            // containerd answers (and sends response headers) only once it has the first
            // message, so it must be queued before the call.
            let (mut tx, rx) = mpsc::channel(1);
            tx.send(req)
                .await
                .map_err(|_| Error::Format("content writer closed".into()))?;
            let responses = self
                .client
                .write(self.conn.request(rx))
                .await
                .map_err(rpc(what()))?
                .into_inner();
            self.stream = Some((tx, responses));
        } else if let Some((tx, _)) = &mut self.stream {
            tx.send(req)
                .await
                .map_err(|_| Error::Format(format!("{}: containerd closed the stream", what())))?;
        }
        let Some((_, responses)) = &mut self.stream else {
            return Err(Error::Format("content writer closed".into()));
        };
        let resp = responses
            .message()
            .await
            .map_err(rpc(what()))?
            .ok_or_else(|| Error::Format(format!("{}: containerd closed the stream", what())))?;
        self.offset += data.len() as u64;
        Ok(resp)
    }
}
