//! `kaji server`: PKI, store, API server, in-process controllers and the admin kubeconfig.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::apiserver::{self, TlsConfig, TokenAuthenticator};
use crate::config::ServerArgs;
use crate::pki;
use crate::store::{SledStore, Store};

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Installed first: a SIGTERM during start-up must shut down cleanly, not kill.
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server_dir = args.data_dir.join("server");
    std::fs::create_dir_all(&server_dir)
        .with_context(|| format!("creating {}", server_dir.display()))?;

    let hostname = hostname();
    let mut hostnames = vec![hostname.clone()];
    let mut ips: Vec<IpAddr> = Vec::new();
    for san in &args.tls_san {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => hostnames.push(san.clone()),
        }
    }
    if let Some(a) = args.advertise_address {
        ips.push(a);
    }
    if !args.bind_address.is_unspecified() {
        ips.push(args.bind_address);
    }
    if let Some(ip) = args.first_service_ip() {
        ips.push(ip);
    }
    let material = pki::ensure(&pki::PkiConfig {
        dir: server_dir.join("tls"),
        hostnames,
        ips,
        cluster_domain: args.cluster_domain.clone(),
    })
    .context("preparing certificates")?;
    let join_secret = ensure_token(&server_dir, args.token.as_deref(), &material.ca_cert_pem)?;

    let db = server_dir.join("db");
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open(&db).with_context(|| format!("opening store at {}", db.display()))?,
    );

    let (cert_pem, key_pem) = pki::issue_client_cert(
        &material.ca_cert_pem,
        &material.ca_key_pem,
        crate::agent::server::APISERVER_CLIENT_CN,
        &["system:masters"],
    )
    .context("issuing the API server's kubelet client certificate")?;
    let kubelet_client = apiserver::proxy::KubeletClientConfig { cert_pem, key_pem };

    let tokens = match &args.token_auth_file {
        Some(p) => TokenAuthenticator::from_file(p)?,
        None => TokenAuthenticator::default(),
    };
    let shutdown = CancellationToken::new();
    let bind = SocketAddr::new(args.bind_address, args.https_listen_port);
    let advertise_ip = args
        .advertise_address
        .unwrap_or(if args.bind_address.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            args.bind_address
        });
    apiserver::admission::default_tolerations::configure(
        args.default_not_ready_toleration_seconds,
        args.default_unreachable_toleration_seconds,
    );
    let running = apiserver::start(
        apiserver::Config {
            bind,
            tls: TlsConfig {
                client_ca_pem: material.ca_cert_pem.clone(),
                cert_pem: material.serving_cert_pem.clone(),
                key_pem: material.serving_key_pem.clone(),
            },
            tokens,
            advertise: format!("{advertise_ip}:{}", args.https_listen_port),
            compaction_interval: Duration::from_secs(args.store_compaction_interval.max(1)),
            compaction_retain: args.store_compaction_retain,
            service_account_key_dir: server_dir.join("tls"),
            service_account_issuer: format!(
                "https://kubernetes.default.svc.{}",
                args.cluster_domain
            ),
            kubelet_client: Some(kubelet_client),
            metrics_api: !args.agent.disabled("metrics-server"),
            services: apiserver::registry::service_alloc::Ranges {
                service_cidr: args.service_cidr.clone(),
                node_port_range: args.service_node_port_range.clone(),
                reserved: vec![args.cluster_dns],
            },
            // Pods reach the API server through the kubernetes Service at this address.
            endpoint_ip: args
                .advertise_address
                .or_else(|| (!args.bind_address.is_unspecified()).then_some(args.bind_address))
                .or(args.agent.node_ip)
                .or_else(crate::agent::node::default_ip)
                .unwrap_or(advertise_ip),
            join: Some(apiserver::join::JoinConfig {
                secret: join_secret,
                ca_cert_pem: material.ca_cert_pem.clone(),
                ca_key_pem: material.ca_key_pem.clone(),
                cluster: crate::pki::join::ClusterSettings {
                    cluster_dns: args.cluster_dns.to_string(),
                    cluster_domain: args.cluster_domain.clone(),
                    service_cidr: args.service_cidr.clone(),
                    cluster_cidr: args.cluster_cidr.clone(),
                    disable: args.agent.disable.clone(),
                    disable_kube_proxy: args.agent.disable_kube_proxy,
                    disable_network_policy: args.agent.disable_network_policy,
                },
            }),
        },
        store.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting the API server")?;

    let local = if args.bind_address.is_unspecified() || args.bind_address.is_loopback() {
        format!("https://127.0.0.1:{}", running.addr.port())
    } else {
        format!("https://{}", running.addr)
    };
    pki::write_kubeconfig(
        &args.write_kubeconfig,
        args.write_kubeconfig_mode,
        &local,
        &material.ca_cert_pem,
        &material.admin_cert_pem,
        &material.admin_key_pem,
        "default",
    )
    .with_context(|| format!("writing kubeconfig {}", args.write_kubeconfig.display()))?;
    tracing::info!(kubeconfig = %args.write_kubeconfig.display(), "wrote admin kubeconfig");

    let controllers = crate::controllers::start(
        crate::client::ClientConfig {
            url: local.clone(),
            ca_pem: material.ca_cert_pem.clone(),
            ca_key_pem: material.ca_key_pem.clone(),
        },
        &crate::controllers::Settings {
            cluster_cidr: args.cluster_cidr.clone(),
            node_monitor_grace_period: args.node_monitor_grace_period,
            terminated_pod_gc_threshold: args.terminated_pod_gc_threshold,
            local_storage: (!args.agent.disabled("local-storage"))
                .then(|| args.data_dir.join("storage")),
            servicelb: (!args.agent.disabled("servicelb")).then(|| {
                if args.agent.disabled("ingress") {
                    crate::controllers::servicelb::Settings::default()
                } else {
                    crate::controllers::servicelb::Settings::with_ingress()
                }
            }),
        },
        shutdown.clone(),
    )
    .await
    .context("starting controllers")?;

    if !args.agent.disabled("dns") {
        let client = crate::client::ClientConfig {
            url: local.clone(),
            ca_pem: material.ca_cert_pem.clone(),
            ca_key_pem: material.ca_key_pem.clone(),
        }
        .client_for("system:kaji-controller", &[])
        .context("cluster DNS service client")?;
        crate::dns::ensure_service(client, args.cluster_dns, shutdown.clone());
    }
    if !args.agent.disabled("ingress") {
        let client = crate::client::ClientConfig {
            url: local.clone(),
            ca_pem: material.ca_cert_pem.clone(),
            ca_key_pem: material.ca_key_pem.clone(),
        }
        .client_for("system:kaji-controller", &[])
        .context("ingress class client")?;
        if let Err(err) = crate::ingress::ensure_ingress_class(client).await {
            tracing::warn!(%err, "creating the kaji IngressClass");
        }
    }

    let scheduler_client = crate::client::ClientConfig {
        url: local.clone(),
        ca_pem: material.ca_cert_pem.clone(),
        ca_key_pem: material.ca_key_pem.clone(),
    }
    .client_for("system:kube-scheduler", &[])
    .context("scheduler client")?;
    let scheduler = tokio::spawn(crate::scheduler::run(
        scheduler_client,
        format!("{hostname}_{}", uuid::Uuid::new_v4()),
        shutdown.clone(),
    ));
    let agent = if args.disable_agent {
        None
    } else {
        let mut cfg = crate::agent::AgentConfig::from_args(
            &args.agent,
            args.data_dir.clone(),
            true,
            args.cluster_dns,
            &args.cluster_domain,
        )
        .context("agent settings")?;
        cfg.ca_pem = material.ca_cert_pem.clone();
        cfg.cluster_cidr = args.cluster_cidr.clone();
        cfg.service_cidr = args.service_cidr.clone();
        let client_cfg = crate::client::ClientConfig {
            url: local.clone(),
            ca_pem: material.ca_cert_pem.clone(),
            ca_key_pem: material.ca_key_pem.clone(),
        };
        let clients = crate::agent::AgentClients::issue(&client_cfg, &cfg.node_name)
            .context("agent clients")?;
        Some(
            crate::agent::run(clients, cfg, shutdown.clone())
                .await
                .context("starting the node agent")?,
        )
    };
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, url = %local, "kaji server is ready");

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), running.done).await;
    controllers.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), scheduler).await;
    if let Some(agent) = agent {
        let _ = tokio::time::timeout(Duration::from_secs(15), agent).await;
    }
    drop(store);
    tracing::info!("kaji server stopped");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Keeps the cluster join token in `<data-dir>/server/token` in k3s's format
/// (`K10<sha256 of the CA>::server:<secret>`, which lets agents verify the CA they
/// download), generating the secret on first start; returns the secret.
fn ensure_token(
    server_dir: &std::path::Path,
    given: Option<&str>,
    ca_pem: &str,
) -> anyhow::Result<String> {
    use crate::pki::join::Token;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = server_dir.join("token");
    let stored = std::fs::read_to_string(&path).ok();
    let existing = stored
        .as_deref()
        .map(Token::parse)
        .transpose()
        .with_context(|| format!("reading {}", path.display()))?;
    let given = given.map(Token::parse).transpose().context("--token")?;
    if let Some(g) = &given {
        if existing.as_ref().is_some_and(|e| e.secret != g.secret) {
            anyhow::bail!(
                "--token does not match the token this server was initialised with ({})",
                path.display()
            );
        }
        if !g.verifies(ca_pem) {
            anyhow::bail!("--token names a different cluster CA than this server's");
        }
    }
    let secret = match existing.or(given) {
        Some(t) => t.secret,
        None => {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..32)
                .map(|_| format!("{:x}", rng.random_range(0..16u8)))
                .collect()
        }
    };
    let full = Token::full(ca_pem, &secret);
    if stored.as_deref().map(str::trim) != Some(full.as_str()) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(f, "{full}")?;
    }
    tracing::info!(
        path = %path.display(),
        "join token written; join nodes with `kaji agent --server https://<this server>:<port> --token-file <copy of it>`"
    );
    Ok(secret)
}
