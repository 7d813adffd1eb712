//! The JSON documents of image archives, without IO: OCI image layouts (`index.json`,
//! `blobs/sha256/<hex>`, names in `io.containerd.image.name` or
//! `org.opencontainers.image.ref.name` annotations), `docker save` archives
//! (`manifest.json` with `RepoTags`, layer tars, config JSON), image configs, platform
//! matching, chain IDs, and the in-memory builder of single-layer OCI archives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::reference;

/// OCI image index media type.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker manifest list.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// containerd's image-name annotation (a full reference).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI reference-name annotation.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A malformed document.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A JSON document does not parse.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A document is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// An image name is invalid.
    #[error(transparent)]
    Reference(#[from] reference::Error),
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An OS and architecture (Go names: `amd64`, `arm64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// CPU variant (`v8`, `v7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image index (or docker manifest list, or an OCI layout's `index.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The media type, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The media type, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config the importer needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// The root filesystem.
    pub rootfs: RootFs,
}

/// The layer list of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layers, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct DockerEntry {
    /// Path of the config JSON in the archive.
    #[serde(rename = "Config")]
    pub config: String,
    /// The image's names (`busybox:latest`); absent or null for an untagged image.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars in the archive, base first.
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

fn json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })
}

/// Parses an index (`index.json`, an OCI index or a docker manifest list).
pub fn parse_index(what: &str, bytes: &[u8]) -> Result<Index, Error> {
    json(what, bytes)
}

/// Parses an image manifest.
pub fn parse_manifest(what: &str, bytes: &[u8]) -> Result<Manifest, Error> {
    let m: Manifest = json(what, bytes)?;
    if m.schema_version != 2 {
        return Err(Error::Invalid(format!(
            "{what}: schemaVersion {} (only 2 is supported)",
            m.schema_version
        )));
    }
    Ok(m)
}

/// Parses an image config.
pub fn parse_config(what: &str, bytes: &[u8]) -> Result<ImageConfig, Error> {
    json(what, bytes)
}

/// Parses a `docker save` `manifest.json`.
pub fn parse_docker_manifest(bytes: &[u8]) -> Result<Vec<DockerEntry>, Error> {
    json("manifest.json", bytes)
}

/// Whether the media type is an index or a manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// Whether the media type is an image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

/// The images an OCI layout's `index.json` names: `(normalised name, target)`. The
/// containerd annotation wins over the OCI one; entries without either are unnamed and
/// left out.
pub fn oci_images(index: &Index) -> Result<Vec<(String, Descriptor)>, Error> {
    let mut out = Vec::new();
    for desc in &index.manifests {
        let name = desc
            .annotations
            .get(ANNOTATION_CONTAINERD_NAME)
            .or_else(|| desc.annotations.get(ANNOTATION_REF_NAME));
        if let Some(name) = name {
            let mut target = desc.clone();
            target.annotations.clear();
            target.platform = None;
            out.push((reference::normalize(name)?, target));
        }
    }
    Ok(out)
}

/// The blob digest an OCI layout path `blobs/sha256/<hex>` stands for.
pub fn blob_path_digest(path: &str) -> Option<String> {
    let hex = path.strip_prefix("blobs/sha256/")?;
    let digest = format!("sha256:{hex}");
    reference::valid_digest(&digest).then_some(digest)
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// The chain IDs of a layer stack (OCI image spec): the first is the first diff ID, each
/// next is `sha256(previous + " " + diff ID)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => digest_of(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// This machine's platform in Go's names.
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.into(),
        os: std::env::consts::OS.into(),
        variant: variant.map(str::to_string),
    }
}

/// Whether an image for `candidate` runs on `host` (arm64's only variant `v8` may be
/// left out, as containerd's default matcher allows).
pub fn platform_matches(candidate: &Platform, host: &Platform) -> bool {
    if candidate.os != host.os || candidate.architecture != host.architecture {
        return false;
    }
    let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
        ("arm64", None | Some("v8")) => None,
        (_, v) => v.map(str::to_string),
    };
    match (norm(candidate), norm(host)) {
        (None, _) => true,
        (c, h) => c == h,
    }
}

/// The manifest in `index` to run on `host`.
pub fn select_manifest<'a>(index: &'a Index, host: &Platform) -> Option<&'a Descriptor> {
    let candidates = || {
        index
            .manifests
            .iter()
            .filter(|d| is_manifest(&d.media_type) || is_index(&d.media_type))
    };
    candidates()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| platform_matches(p, host))
        })
        .or_else(|| candidates().find(|d| d.platform.is_none()))
}

/// The OCI manifest kaji writes for an image of a `docker save` archive, whose layers
/// are stored as found (uncompressed or gzip).
pub fn docker_manifest(config: (&str, i64), layers: &[(String, i64, bool)]) -> Manifest {
    Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_OCI_CONFIG.into(),
            digest: config.0.to_string(),
            size: config.1,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers: layers
            .iter()
            .map(|(digest, size, gzip)| Descriptor {
                media_type: if *gzip {
                    MEDIA_OCI_LAYER_GZIP
                } else {
                    MEDIA_OCI_LAYER
                }
                .into(),
                digest: digest.clone(),
                size: *size,
                annotations: BTreeMap::new(),
                platform: None,
            })
            .collect(),
    }
}

/// Resolves `target` (a path in a `docker save` archive, relative to the archive's root)
/// against the directory of `from` (an entry path), for symlinked layer files.
pub fn resolve_link(from: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        from.split('/').collect()
    };
    if !target.starts_with('/') {
        parts.pop();
    }
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// A single-layer OCI image archive built in memory.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The archive (an OCI image layout tarball).
    pub archive: Vec<u8>,
    /// The manifest's descriptor (the image's target).
    pub manifest: Descriptor,
    /// The layer's diff ID (= its chain ID: there is one layer).
    pub diff_id: String,
}

/// Files of a [`build_image`] layer.
#[derive(Debug, Clone)]
pub enum File<'a> {
    /// A regular file with its mode.
    Regular(&'a str, u32, &'a [u8]),
    /// A directory.
    Dir(&'a str),
    /// A symbolic link and its target.
    Symlink(&'a str, &'a str),
}

/// Builds a reproducible OCI layout tarball of one uncompressed layer holding `files`,
/// for the host's platform, named `name` (normalised) with the given entrypoint.
pub fn build_image(
    name: &str,
    files: &[File<'_>],
    entrypoint: &[&str],
) -> Result<BuiltImage, Error> {
    let name = reference::normalize(name)?;
    let mut layer = super::tar::Builder::new();
    for f in files {
        match *f {
            File::Regular(path, mode, data) => layer.file(path, mode, data),
            File::Dir(path) => layer.dir(path, 0o755),
            File::Symlink(path, target) => layer.symlink(path, target),
        };
    }
    let layer = layer.finish();
    let diff_id = digest_of(&layer);
    let host = host_platform();
    let mut config = serde_json::json!({
        "architecture": host.architecture,
        "os": host.os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": entrypoint,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    if let Some(v) = &host.variant {
        config["variant"] = serde_json::Value::String(v.clone());
    }
    let config = serde_json::to_vec(&config).map_err(|source| Error::Json {
        what: "config".into(),
        source,
    })?;
    let config_digest = digest_of(&config);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_OCI_CONFIG.into(),
            digest: config_digest.clone(),
            size: config.len() as i64,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers: vec![Descriptor {
            media_type: MEDIA_OCI_LAYER.into(),
            digest: diff_id.clone(),
            size: layer.len() as i64,
            annotations: BTreeMap::new(),
            platform: None,
        }],
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|source| Error::Json {
        what: "manifest".into(),
        source,
    })?;
    let manifest_desc = Descriptor {
        media_type: MEDIA_OCI_MANIFEST.into(),
        digest: digest_of(&manifest_bytes),
        size: manifest_bytes.len() as i64,
        annotations: BTreeMap::new(),
        platform: None,
    };
    let tag = name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.contains('/'))
        .unwrap_or("latest");
    let mut entry = manifest_desc.clone();
    entry
        .annotations
        .insert(ANNOTATION_CONTAINERD_NAME.into(), name.clone());
    entry
        .annotations
        .insert(ANNOTATION_REF_NAME.into(), tag.to_string());
    entry.platform = Some(host);
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.into()),
        manifests: vec![entry],
    };
    let index_bytes = serde_json::to_vec(&index).map_err(|source| Error::Json {
        what: "index".into(),
        source,
    })?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let mut archive = super::tar::Builder::new();
    archive
        .file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", 0o644, &index_bytes)
        .dir("blobs", 0o755)
        .dir("blobs/sha256", 0o755)
        .file(&blob(&config_digest), 0o644, &config)
        .file(&blob(&diff_id), 0o644, &layer)
        .file(&blob(&manifest_desc.digest), 0o644, &manifest_bytes);
    Ok(BuiltImage {
        archive: archive.finish(),
        manifest: manifest_desc,
        diff_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a =
            "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_string();
        let b =
            "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".to_string();
        let c =
            "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc".to_string();
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        let ab = format!("sha256:{:x}", Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(ids[1], ab);
        assert_eq!(
            ids[2],
            format!(
                "sha256:{:x}",
                Sha256::digest(format!("{ab} {c}").as_bytes())
            )
        );
        assert!(chain_ids(&[]).is_empty());
        assert_eq!(
            chain_ids(std::slice::from_ref(&c)),
            vec![c.clone()],
            "one layer: the chain ID is its diff ID"
        );
    }

    #[test]
    fn oci_index_names() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":10,
             "annotations":{"io.containerd.image.name":"docker.io/library/busybox:1.36","org.opencontainers.image.ref.name":"1.36"},
             "platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":20,
             "annotations":{"org.opencontainers.image.ref.name":"quay.io/app/web"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":30}
        ]}"#;
        let index = parse_index("index.json", index).unwrap();
        let images = oci_images(&index).unwrap();
        let names: Vec<(&str, &str, i64)> = images
            .iter()
            .map(|(n, d)| (n.as_str(), d.media_type.as_str(), d.size))
            .collect();
        assert_eq!(
            names,
            vec![
                ("docker.io/library/busybox:1.36", MEDIA_OCI_MANIFEST, 10),
                ("quay.io/app/web:latest", MEDIA_OCI_INDEX, 20)
            ]
        );
        assert!(
            images[0].1.annotations.is_empty(),
            "the image target carries no layout annotations"
        );

        let bad = br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:1","size":1,"annotations":{"io.containerd.image.name":"UPPER"}}]}"#;
        assert!(oci_images(&parse_index("index.json", bad).unwrap()).is_err());
        assert!(parse_index("index.json", b"{").is_err());
    }

    #[test]
    fn docker_save_manifest() {
        let text = br#"[
          {"Config":"4a4d.json","RepoTags":["busybox:latest","localhost:5000/bb:1"],"Layers":["d1a7/layer.tar","e2b8/layer.tar"]},
          {"Config":"blobs/sha256/abcd","RepoTags":null,"Layers":[]}
        ]"#;
        let entries = parse_docker_manifest(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].config, "4a4d.json");
        assert_eq!(
            entries[0].repo_tags.as_deref(),
            Some(
                &[
                    "busybox:latest".to_string(),
                    "localhost:5000/bb:1".to_string()
                ][..]
            )
        );
        assert_eq!(entries[0].layers, vec!["d1a7/layer.tar", "e2b8/layer.tar"]);
        assert!(entries[1].repo_tags.is_none());

        let m = docker_manifest(
            ("sha256:c", 5),
            &[
                ("sha256:l1".into(), 100, false),
                ("sha256:l2".into(), 50, true),
            ],
        );
        let bytes = serde_json::to_vec(&m).unwrap();
        let back = parse_manifest("m", &bytes).unwrap();
        assert_eq!(back.config.media_type, MEDIA_OCI_CONFIG);
        assert_eq!(back.layers[0].media_type, MEDIA_OCI_LAYER);
        assert_eq!(back.layers[1].media_type, MEDIA_OCI_LAYER_GZIP);
        assert!(!String::from_utf8(bytes).unwrap().contains("annotations"));
    }

    #[test]
    fn config_and_manifest_parsing() {
        let cfg = br#"{"architecture":"arm64","variant":"v8","os":"linux","config":{"Entrypoint":["/pause"]},
                       "rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]}}"#;
        let cfg = parse_config("config", cfg).unwrap();
        assert_eq!(
            (
                cfg.architecture.as_str(),
                cfg.os.as_str(),
                cfg.variant.as_deref()
            ),
            ("arm64", "linux", Some("v8"))
        );
        assert_eq!(cfg.rootfs.diff_ids, vec!["sha256:aa", "sha256:bb"]);
        assert_eq!(cfg.rootfs.kind, "layers");
        let v1 = br#"{"schemaVersion":1,"config":{"digest":"sha256:a","size":1},"layers":[]}"#;
        assert!(
            parse_manifest("m", v1)
                .unwrap_err()
                .to_string()
                .contains("schemaVersion 1")
        );
    }

    #[test]
    fn platforms() {
        let p = |a: &str, v: Option<&str>| Platform {
            architecture: a.into(),
            os: "linux".into(),
            variant: v.map(Into::into),
        };
        let cases = [
            (p("amd64", None), p("amd64", None), true),
            (p("arm64", None), p("arm64", Some("v8")), true),
            (p("arm64", Some("v8")), p("arm64", None), true),
            (p("arm", Some("v6")), p("arm", Some("v7")), false),
            (p("arm", None), p("arm", Some("v7")), true),
            (p("arm64", None), p("amd64", None), false),
            (
                Platform {
                    architecture: "amd64".into(),
                    os: "windows".into(),
                    variant: None,
                },
                p("amd64", None),
                false,
            ),
        ];
        for (candidate, host, want) in cases {
            assert_eq!(
                platform_matches(&candidate, &host),
                want,
                "{candidate:?} on {host:?}"
            );
        }
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                Descriptor {
                    media_type: MEDIA_OCI_MANIFEST.into(),
                    digest: "sha256:1".into(),
                    size: 1,
                    annotations: BTreeMap::new(),
                    platform: Some(p("s390x", None)),
                },
                Descriptor {
                    media_type: MEDIA_DOCKER_MANIFEST.into(),
                    digest: "sha256:2".into(),
                    size: 1,
                    annotations: BTreeMap::new(),
                    platform: Some(p("arm64", Some("v8"))),
                },
                Descriptor {
                    media_type: MEDIA_OCI_MANIFEST.into(),
                    digest: "sha256:3".into(),
                    size: 1,
                    annotations: BTreeMap::new(),
                    platform: Some(p("amd64", None)),
                },
            ],
        };
        assert_eq!(
            select_manifest(&index, &p("arm64", None)).unwrap().digest,
            "sha256:2"
        );
        assert_eq!(
            select_manifest(&index, &p("amd64", None)).unwrap().digest,
            "sha256:3"
        );
        assert!(select_manifest(&index, &p("riscv64", None)).is_none());
    }

    #[test]
    fn blob_paths_and_links() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            blob_path_digest(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(blob_path_digest("blobs/sha256/short"), None);
        assert_eq!(blob_path_digest(&format!("other/sha256/{hex}")), None);
        assert_eq!(
            resolve_link("abc/layer.tar", "../def/layer.tar"),
            "def/layer.tar"
        );
        assert_eq!(
            resolve_link("abc/layer.tar", &format!("../blobs/sha256/{hex}")),
            format!("blobs/sha256/{hex}")
        );
        assert_eq!(resolve_link("x/y/z", "./w"), "x/y/w");
        assert_eq!(resolve_link("x/y", "/top"), "top");
    }

    #[tokio::test]
    async fn built_images_are_reproducible_layouts() {
        let files = [File::Regular("pause", 0o755, b"\x7fELF...")];
        let a = build_image("kaji.local/pause:3.10", &files, &["/pause"]).unwrap();
        let b = build_image("kaji.local/pause:3.10", &files, &["/pause"]).unwrap();
        assert_eq!(a.archive, b.archive, "same input, same bytes");
        assert_eq!(a.manifest, b.manifest);

        let mut reader = super::super::tar::Reader::new(&a.archive[..]);
        let mut blobs = BTreeMap::new();
        let mut index = None;
        while let Some(e) = reader.next_entry().await.unwrap() {
            let mut data = vec![0u8; e.size as usize];
            reader.read_full(&mut data).await.unwrap();
            if let Some(d) = blob_path_digest(&e.path) {
                assert_eq!(digest_of(&data), d, "blob {} holds its digest", e.path);
                blobs.insert(d, data);
            } else if e.path == "index.json" {
                index = Some(data);
            }
        }
        let index = parse_index("index.json", &index.unwrap()).unwrap();
        let images = oci_images(&index).unwrap();
        assert_eq!(
            images,
            vec![("kaji.local/pause:3.10".to_string(), a.manifest.clone())]
        );
        let manifest = parse_manifest("m", &blobs[&a.manifest.digest]).unwrap();
        let config = parse_config("c", &blobs[&manifest.config.digest]).unwrap();
        assert_eq!(config.rootfs.diff_ids, vec![a.diff_id.clone()]);
        assert_eq!(config.architecture, host_platform().architecture);
        let raw: serde_json::Value =
            serde_json::from_slice(&blobs[&manifest.config.digest]).unwrap();
        assert_eq!(raw["config"]["Entrypoint"], serde_json::json!(["/pause"]));

        let mut layer = super::super::tar::Reader::new(&blobs[&a.diff_id][..]);
        let e = layer.next_entry().await.unwrap().unwrap();
        assert_eq!(
            (e.path.as_str(), e.size, e.mode, e.kind),
            ("pause", 7, 0o755, super::super::tar::Kind::File)
        );
        assert!(layer.next_entry().await.unwrap().is_none());
    }
}
