#!/usr/bin/env bash
# Holds the dependency direction of docs/ARCHITECTURE.md to account: only the API server
# touches the store, and the vocabulary layers perform no IO and import nothing above them.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
check() { # dir pattern message
  if [ -e "$1" ] && grep -rnE "$2" "$1" --include='*.rs'; then
    echo "layer violation: $3" >&2
    fail=1
  fi
}
for d in src/controllers src/client src/scheduler src/agent src/proxy src/netpol src/dns src/ingress src/deploy; do
  check "$d" 'crate::(store|apiserver)' "$d must reach the API through client/, never store/ or apiserver/"
done
check src/store 'crate::(api|apiserver|pki|client|controllers|cmd)' "store/ knows keys and bytes only"
check src/api 'crate::(store|apiserver|pki|client|controllers|cmd)' "api/ is vocabulary without IO"
check src/config 'crate::(store|apiserver|pki|client|controllers|cmd)' "config/ is plain data"
check src/netfilter.rs 'crate::' "netfilter.rs runs nft and depends on nothing in the crate"
check src/httprelay.rs 'crate::' "httprelay.rs is HTTP plumbing and depends on nothing in the crate"
check src/reflect.rs 'crate::' "reflect.rs is kube-runtime plumbing and depends on nothing in the crate"
check src/pki 'crate::(store|apiserver|client|controllers|cmd)' "pki/ depends on nothing above it"
check src/apiserver 'crate::(controllers|client|cmd)' "apiserver/ must not depend on API clients"
exit $fail
