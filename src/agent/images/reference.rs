//! Image references, normalised the way docker and containerd's CRI plugin do:
//! `busybox` → `docker.io/library/busybox:latest`, `quay.io/x/y` → `quay.io/x/y:latest`,
//! `index.docker.io/u/app:1` → `docker.io/u/app:1`; a digest is kept after the tag.

/// A reference that is not a valid image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct Error {
    /// The reference as given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The registry an unqualified name belongs to.
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// Normalises `reference` to its fully qualified form `domain/path[:tag][@digest]`,
/// adding `:latest` when it has neither tag nor digest.
pub fn normalize(reference: &str) -> Result<String, Error> {
    let err = |reason| Error {
        reference: reference.to_string(),
        reason,
    };
    if reference.is_empty() || reference.len() > 4096 {
        return Err(err("empty or too long"));
    }
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => {
            if !valid_digest(d) {
                return Err(err("the digest is not sha256:<64 hex digits>"));
            }
            (n, Some(d))
        }
        None => (reference, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(err(
            "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
        ));
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest.to_string())
        }
        _ => (DEFAULT_DOMAIN, name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if !valid_domain(domain) {
        return Err(err(
            "the registry must be a host name with an optional port",
        ));
    }
    if !path.split('/').all(valid_component) {
        return Err(err(
            "repository path components must be lowercase letters and digits separated by '.', '_', '__' or dashes",
        ));
    }
    if domain.len() + 1 + path.len() > 255 {
        return Err(err("the repository name is longer than 255 characters"));
    }
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (None, None) => out.push_str(":latest"),
        (t, d) => {
            if let Some(t) = t {
                out.push(':');
                out.push_str(t);
            }
            if let Some(d) = d {
                out.push('@');
                out.push_str(d);
            }
        }
    }
    Ok(out)
}

/// Whether `s` is `sha256:` followed by 64 lowercase hex digits.
pub fn valid_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// One path component: `[a-z0-9]+` groups joined by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases: &[(&str, &str)] = &[
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("index.docker.io/busybox:x", "docker.io/library/busybox:x"),
            ("user/app", "docker.io/user/app:latest"),
            ("user/app:v1.2-rc_3", "docker.io/user/app:v1.2-rc_3"),
            ("quay.io/coreos/etcd", "quay.io/coreos/etcd:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
            ("kaji.local/pause:3.10", "kaji.local/pause:3.10"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            (
                "my-registry.example.com/a__b/c.d/e--f",
                "my-registry.example.com/a__b/c.d/e--f:latest",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(*want), "{input}");
        }
        assert_eq!(
            normalize(&format!("busybox@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            normalize(&format!("busybox:1@{d}")).unwrap(),
            format!("docker.io/library/busybox:1@{d}")
        );
    }

    #[test]
    fn rejects_invalid_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "busybox@sha256:xyz",
            "-bad/app",
            "app_",
            "a/b.",
            "a/b___c",
            "a/b:",
            "host:port/app",
            "registry.example.com:/app",
        ] {
            assert!(
                normalize(bad).is_err(),
                "{bad:?} should be rejected: {:?}",
                normalize(bad)
            );
        }
    }

    #[test]
    fn digests() {
        assert!(valid_digest(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        ));
        assert!(!valid_digest(
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
        ));
        assert!(!valid_digest("sha512:e3b0"));
        assert!(!valid_digest(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        ));
    }
}
