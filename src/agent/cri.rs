//! The CRI client: the RuntimeService and ImageService that containerd's CRI plugin
//! serves on its unix socket, reached with tonic — the same API the upstream kubelet
//! drives. Labels on sandboxes and containers use the kubelet's keys, so `crictl` shows
//! kaji's pods the way it shows any kubelet's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{self as cri};
use tonic::transport::{Channel, Endpoint};

use super::Error;

/// Label holding the pod name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label holding the pod namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label holding the pod uid.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label holding the container name.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotation holding the container's restart count.
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Annotation holding the container's termination grace period.
pub const ANNOTATION_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
/// Annotation holding a hash of the container spec (a changed spec restarts it).
pub const ANNOTATION_HASH: &str = "io.kubernetes.container.hash";

/// A connection to a CRI runtime.
#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// The socket path.
    pub socket: PathBuf,
}

fn rpc(what: &str, e: tonic::Status) -> Error {
    Error::Runtime(format!("{what}: {}", e.message()))
}

/// Whether a CRI error says the object does not exist.
pub fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Runtime(m) if m.contains("not found") || m.contains("does not exist"))
}

impl Cri {
    /// Connects to the CRI socket (`unix:///path` or a plain path).
    pub async fn connect(endpoint: &str) -> Result<Cri, Error> {
        let path = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
        let p = path.clone();
        let channel = Endpoint::try_from("http://[::1]:50051")
            .map_err(|e| Error::Runtime(e.to_string()))?
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .map_err(|e| Error::Runtime(format!("connecting to {}: {e}", path.display())))?;
        let cri = Cri {
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(channel).max_decoding_message_size(64 << 20),
            socket: path,
        };
        Ok(cri)
    }

    /// Waits until the runtime answers Version (up to ~30 s).
    pub async fn wait_ready(socket: &Path) -> Result<(Cri, String), Error> {
        let mut last = String::new();
        for _ in 0..150 {
            match Cri::connect(&socket.display().to_string()).await {
                Ok(mut c) => match c.version().await {
                    Ok(v) => return Ok((c, v)),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Err(Error::Runtime(format!(
            "CRI runtime at {} not ready: {last}",
            socket.display()
        )))
    }

    /// `runtimeName://runtimeVersion`, as nodeInfo.containerRuntimeVersion shows it.
    pub async fn version(&mut self) -> Result<String, Error> {
        let v = self
            .runtime
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(|e| rpc("Version", e))?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    /// Sandboxes of one pod (by uid), newest first; all sandboxes when `uid` is None.
    pub async fn sandboxes(&mut self, uid: Option<&str>) -> Result<Vec<cri::PodSandbox>, Error> {
        let mut selector = HashMap::new();
        if let Some(u) = uid {
            selector.insert(LABEL_POD_UID.to_string(), u.to_string());
        }
        let filter = cri::PodSandboxFilter {
            label_selector: selector,
            ..Default::default()
        };
        let mut items = self
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|e| rpc("ListPodSandbox", e))?
            .into_inner()
            .items;
        items.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(items)
    }

    /// Status of a sandbox (with its IPs).
    pub async fn sandbox_status(&mut self, id: &str) -> Result<cri::PodSandboxStatus, Error> {
        self.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|e| rpc("PodSandboxStatus", e))?
            .into_inner()
            .status
            .ok_or_else(|| Error::Runtime("PodSandboxStatus: empty".into()))
    }

    /// Creates and starts a sandbox.
    pub async fn run_sandbox(&mut self, config: cri::PodSandboxConfig) -> Result<String, Error> {
        Ok(self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| rpc("RunPodSandbox", e))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// Stops a sandbox (and its network).
    pub async fn stop_sandbox(&mut self, id: &str) -> Result<(), Error> {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(|e| rpc("StopPodSandbox", e))?;
        Ok(())
    }

    /// Removes a stopped sandbox.
    pub async fn remove_sandbox(&mut self, id: &str) -> Result<(), Error> {
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(|e| rpc("RemovePodSandbox", e))?;
        Ok(())
    }

    /// Containers of one pod (by uid), all states.
    pub async fn containers(&mut self, uid: Option<&str>) -> Result<Vec<cri::Container>, Error> {
        let mut selector = HashMap::new();
        if let Some(u) = uid {
            selector.insert(LABEL_POD_UID.to_string(), u.to_string());
        }
        let filter = cri::ContainerFilter {
            label_selector: selector,
            ..Default::default()
        };
        Ok(self
            .runtime
            .list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|e| rpc("ListContainers", e))?
            .into_inner()
            .containers)
    }

    /// Full status of a container.
    pub async fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus, Error> {
        self.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|e| rpc("ContainerStatus", e))?
            .into_inner()
            .status
            .ok_or_else(|| Error::Runtime("ContainerStatus: empty".into()))
    }

    /// Creates a container in a sandbox.
    pub async fn create_container(
        &mut self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox: cri::PodSandboxConfig,
    ) -> Result<String, Error> {
        Ok(self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await
            .map_err(|e| rpc("CreateContainer", e))?
            .into_inner()
            .container_id)
    }

    /// Starts a created container.
    pub async fn start_container(&mut self, id: &str) -> Result<(), Error> {
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(|e| rpc("StartContainer", e))?;
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout` seconds.
    pub async fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), Error> {
        self.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .map_err(|e| rpc("StopContainer", e))?;
        Ok(())
    }

    /// Removes a container.
    pub async fn remove_container(&mut self, id: &str) -> Result<(), Error> {
        self.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(|e| rpc("RemoveContainer", e))?;
        Ok(())
    }

    /// Runs a command in a container and waits for it (probes, hooks).
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, Error> {
        Ok(self
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd,
                timeout,
            })
            .await
            .map_err(|e| rpc("ExecSync", e))?
            .into_inner())
    }

    /// The image's id if present locally.
    pub async fn image_present(&mut self, image: &str) -> Result<Option<String>, Error> {
        let resp = self
            .images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(|e| rpc("ImageStatus", e))?
            .into_inner();
        Ok(resp.image.map(|i| i.id))
    }

    /// Pulls an image (with registry credentials if given); returns the image ref.
    pub async fn pull_image(
        &mut self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, Error> {
        Ok(self
            .images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            })
            .await
            .map_err(|e| rpc("PullImage", e))?
            .into_inner()
            .image_ref)
    }

    /// The raw runtime client, for streaming and stats calls.
    pub fn runtime(&mut self) -> &mut RuntimeServiceClient<Channel> {
        &mut self.runtime
    }
}
