#!/usr/bin/env bash
# Builds a container image tarball from files on this machine, without a registry or a
# container engine: an OCI image layout (default) or a `docker save` archive, one layer.
#
#   scripts/build-image.sh NAME[:TAG] OUT.tar [options]
#
#   --busybox            static busybox (Debian's busybox-static) as /bin/busybox, with a
#                        symlink in /bin for every applet (sh, httpd, nc, sleep, wget, ...)
#   --binary PATH        copy PATH into the image at the same path, plus every library
#                        `ldd` lists for it (repeatable), e.g. --binary /usr/bin/redis-server
#   --file SRC:DEST      copy a host file or directory to DEST in the image (repeatable)
#   --entrypoint "A B"   the image's Entrypoint, split on spaces
#   --cmd "A B"          the image's Cmd, split on spaces
#   --env K=V            an environment variable (repeatable; PATH is set by default)
#   --workdir DIR        the working directory (default /)
#   --gzip               gzip-compress the layer
#   --format oci|docker  OCI image layout (default) or `docker save` layout
#   --arch ARCH          architecture recorded in the config (default: this machine's)
#
# Import the result with `kaji image import OUT.tar`, or drop it in
# <data-dir>/agent/images/ before the agent starts. Pure bash + coreutils + tar.
set -euo pipefail

usage() { # exit-code
  sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

[[ ${1:-} == -h || ${1:-} == --help ]] && usage 0
(($# >= 2)) || usage
name=$1
out=$2
shift 2

busybox=0 gzip=0 format=oci workdir=/ entrypoint="" cmd="" arch=""
binaries=() files=() envs=()
while (($#)); do
  case $1 in
    --busybox) busybox=1 ;;
    --gzip) gzip=1 ;;
    --binary) binaries+=("${2:?--binary needs a path}"); shift ;;
    --file) files+=("${2:?--file needs SRC:DEST}"); shift ;;
    --entrypoint) entrypoint=${2?}; shift ;;
    --cmd) cmd=${2?}; shift ;;
    --env) envs+=("${2:?--env needs K=V}"); shift ;;
    --workdir) workdir=${2:?}; shift ;;
    --format) format=${2:?}; shift ;;
    --arch) arch=${2:?}; shift ;;
    -h | --help) usage 0 ;;
    *) echo "build-image.sh: unknown option $1" >&2; usage ;;
  esac
  shift
done
[[ $format == oci || $format == docker ]] || { echo "build-image.sh: --format must be oci or docker" >&2; exit 2; }

if [[ -z $arch ]]; then
  case $(uname -m) in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    armv7l) arch=arm ;;
    *) arch=$(uname -m) ;;
  esac
fi

# The fully qualified reference, normalised the way containerd and docker do
# (busybox -> docker.io/library/busybox:latest).
full=$name
first=${full%%/*}
if [[ $full != */* ]]; then
  full=docker.io/library/$full
elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
  full=docker.io/$full
fi
last=${full##*/}
[[ $last == *:* || $full == *@* ]] || full=$full:latest
tag=${full%%@*}
tag=${tag##*/}
[[ $tag == *:* ]] && tag=${tag##*:} || tag=""
short=${name%%@*}
[[ ${short##*/} == *:* ]] || short=$short:latest

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root}
chmod 0755 "$root"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

copy_into() { # host-path image-path
  mkdir -p "$root$(dirname "$2")"
  cp -L --preserve=mode "$1" "$root$2"
}

if ((busybox)); then
  bb=""
  for candidate in /bin/busybox /usr/bin/busybox; do
    [[ -x $candidate ]] && { bb=$candidate; break; }
  done
  [[ -n $bb ]] || { echo "build-image.sh: busybox not found (apt-get install busybox-static)" >&2; exit 1; }
  if ldd "$bb" >/dev/null 2>&1; then
    echo "build-image.sh: $bb is dynamically linked; install Debian's busybox-static" >&2
    exit 1
  fi
  copy_into "$bb" /bin/busybox
  for applet in $("$bb" --list); do
    [[ $applet == busybox || -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
  done
fi

for bin in "${binaries[@]}"; do
  [[ -f $bin ]] || { echo "build-image.sh: $bin: no such file" >&2; exit 1; }
  copy_into "$bin" "$bin"
  # Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; static programs have none.
  while read -r lib; do
    [[ -n $lib && -e $lib ]] && copy_into "$lib" "$lib"
  done < <(ldd "$bin" 2>/dev/null | sed -nE 's#.*=> (/[^ ]+) \(.*#\1#p; s#^[[:space:]]*(/[^ ]+) \(.*#\1#p')
done

for spec in "${files[@]}"; do
  src=${spec%%:*} dest=${spec#*:}
  [[ -e $src && $dest == /* ]] || { echo "build-image.sh: --file $spec: expected an existing SRC and an absolute DEST" >&2; exit 1; }
  mkdir -p "$root$(dirname "$dest")"
  cp -a "$src" "$root$dest"
done

tarflags=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu)
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
tar "${tarflags[@]}" -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
if ((gzip)); then
  gzip -n -6 "$work/layer.tar"
  layer_file=$work/layer.tar.gz
  layer_type=application/vnd.oci.image.layer.v1.tar+gzip
else
  layer_file=$work/layer.tar
  layer_type=application/vnd.oci.image.layer.v1.tar
fi
layer_digest=$(sha256sum "$layer_file" | cut -d' ' -f1)
layer_size=$(stat -c %s "$layer_file")

json_str() { # prints $1 as a JSON string
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  s=${s//$'\n'/\\n}
  printf '"%s"' "$s"
}
json_words() { # prints the space-separated words of $1 as a JSON array
  local first=1 w words
  read -r -a words <<<"$1"
  printf '['
  for w in "${words[@]}"; do
    ((first)) || printf ','
    first=0
    json_str "$w"
  done
  printf ']'
}

env_json=$(json_str "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
for e in "${envs[@]}"; do env_json+=",$(json_str "$e")"; done
{
  printf '{"architecture":%s,"os":"linux","config":{"Env":[%s]' "$(json_str "$arch")" "$env_json"
  [[ -n $entrypoint ]] && printf ',"Entrypoint":%s' "$(json_words "$entrypoint")"
  [[ -n $cmd ]] && printf ',"Cmd":%s' "$(json_words "$cmd")"
  printf ',"WorkingDir":%s},' "$(json_str "$workdir")"
  printf '"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},' "$diff_id"
  printf '"history":[{"created_by":"kaji scripts/build-image.sh"}]}'
} >"$work/config.json"
config_digest=$(sha256sum "$work/config.json" | cut -d' ' -f1)
config_size=$(stat -c %s "$work/config.json")

if [[ $format == docker ]]; then
  # `docker save` layout: manifest.json naming the config and the layer files.
  mkdir -p "$layout/$diff_id"
  cp "$layer_file" "$layout/$diff_id/layer.tar"
  cp "$work/config.json" "$layout/$config_digest.json"
  printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":["%s/layer.tar"]}]\n' \
    "$config_digest" "$(json_str "$short")" "$diff_id" >"$layout/manifest.json"
  rm -rf "$layout/blobs"
  tar "${tarflags[@]}" -C "$layout" -cf "$out" manifest.json "$config_digest.json" "$diff_id"
else
  cp "$layer_file" "$layout/blobs/sha256/$layer_digest"
  cp "$work/config.json" "$layout/blobs/sha256/$config_digest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"%s","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_type" "$layer_digest" "$layer_size" >"$work/manifest.json"
  manifest_digest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
  manifest_size=$(stat -c %s "$work/manifest.json")
  cp "$work/manifest.json" "$layout/blobs/sha256/$manifest_digest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s},"platform":{"architecture":%s,"os":"linux"}}]}\n' \
    "$manifest_digest" "$manifest_size" "$(json_str "$full")" "$(json_str "$tag")" "$(json_str "$arch")" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}\n' >"$layout/oci-layout"
  tar "${tarflags[@]}" -C "$layout" -cf "$out" oci-layout index.json blobs
fi
echo "$full -> $out ($format, $(stat -c %s "$out") bytes)" >&2
