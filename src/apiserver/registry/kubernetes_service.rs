//! The `default/kubernetes` Service and its Endpoints and EndpointSlice, kept by the API
//! server itself (upstream's bootstrap controller and master endpoint reconciler): the
//! Service has the first IP of the service range and port `https` 443/TCP targeting the
//! API server's port; the Endpoints (`endpointslice.kubernetes.io/skip-mirror: "true"`)
//! and the EndpointSlice (`kubernetes.io/service-name: kubernetes`) list the advertised
//! address. Writes go through the [`Registry`] like any other; an object already as
//! desired is left untouched, so watchers see no churn.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::{Registry, Update, WriteOptions};
use crate::api::resources::lookup;
use crate::api::status::Status;

/// The name of the Service, Endpoints and EndpointSlice.
pub const NAME: &str = "kubernetes";
/// Its namespace.
pub const NAMESPACE: &str = "default";

fn opts() -> WriteOptions {
    WriteOptions {
        field_manager: Some("kube-apiserver".into()),
        ..WriteOptions::default()
    }
}

fn resource(
    group: &str,
    version: &str,
    plural: &str,
) -> Result<&'static crate::api::ResourceInfo, Status> {
    lookup(group, version, plural).ok_or_else(|| Status::internal(format!("{plural} not served")))
}

/// The desired Service ports.
fn service_ports(port: u16) -> Value {
    json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}])
}

/// Creates or repairs the Service, Endpoints and EndpointSlice.
pub async fn reconcile(
    reg: &Registry,
    cluster_ip: IpAddr,
    endpoint_ip: IpAddr,
    port: u16,
) -> Result<(), Status> {
    reconcile_service(reg, cluster_ip, port).await?;
    reconcile_endpoints(reg, endpoint_ip, port).await?;
    reconcile_slice(reg, endpoint_ip, port).await
}

async fn reconcile_service(reg: &Registry, cluster_ip: IpAddr, port: u16) -> Result<(), Status> {
    let ri = resource("", "v1", "services")?;
    match reg.get(ri, Some(NAMESPACE), NAME).await {
        Err(s) if s.code == 404 => {
            let svc = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": NAME, "namespace": NAMESPACE,
                    "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": cluster_ip.to_string(),
                    "clusterIPs": [cluster_ip.to_string()], "sessionAffinity": "None",
                    "ports": service_ports(port)},
            });
            match reg.create(ri, Some(NAMESPACE), svc, &opts()).await {
                Ok(_) => {
                    tracing::info!(%cluster_ip, "created the kubernetes service");
                    Ok(())
                }
                Err(s) if s.code == 409 => Ok(()),
                Err(s) => Err(s),
            }
        }
        Err(s) => Err(s),
        Ok(cur) => {
            let want = service_ports(port);
            if cur["spec"]["ports"] == want && cur["spec"]["type"] == "ClusterIP" {
                return Ok(());
            }
            let mut next = cur.clone();
            next["spec"]["ports"] = want;
            next["spec"]["type"] = json!("ClusterIP");
            reg.update(
                ri,
                Some(NAMESPACE),
                NAME,
                None,
                Update::Replace(&next),
                &opts(),
            )
            .await
            .map(|_| ())
        }
    }
}

/// Creates `desired` or makes the stored object's `fields` equal to it.
async fn ensure(
    reg: &Registry,
    ri: &'static crate::api::ResourceInfo,
    desired: Value,
    fields: &[&str],
) -> Result<(), Status> {
    match reg.get(ri, Some(NAMESPACE), NAME).await {
        Err(s) if s.code == 404 => match reg.create(ri, Some(NAMESPACE), desired, &opts()).await {
            Ok(_) | Err(Status { code: 409, .. }) => Ok(()),
            Err(s) => Err(s),
        },
        Err(s) => Err(s),
        Ok(cur) => {
            let labels_ok = desired["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| cur["metadata"]["labels"][k] == *v);
            if labels_ok && fields.iter().all(|f| cur[*f] == desired[*f]) {
                return Ok(());
            }
            let mut next = cur.clone();
            for f in fields {
                next[*f] = desired[*f].clone();
            }
            for (k, v) in desired["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
            {
                next["metadata"]["labels"][k] = v.clone();
            }
            reg.update(
                ri,
                Some(NAMESPACE),
                NAME,
                None,
                Update::Replace(&next),
                &opts(),
            )
            .await
            .map(|_| ())
        }
    }
}

async fn reconcile_endpoints(reg: &Registry, ip: IpAddr, port: u16) -> Result<(), Status> {
    let ri = resource("", "v1", "endpoints")?;
    let desired = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip.to_string()}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    ensure(reg, ri, desired, &["subsets"]).await
}

async fn reconcile_slice(reg: &Registry, ip: IpAddr, port: u16) -> Result<(), Status> {
    let ri = resource("discovery.k8s.io", "v1", "endpointslices")?;
    let family = if ip.is_ipv6() { "IPv6" } else { "IPv4" };
    let desired = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": NAME}},
        "addressType": family,
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    ensure(reg, ri, desired, &["addressType", "endpoints", "ports"]).await
}
