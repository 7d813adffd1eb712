//! The service proxy (kaji's kube-proxy): programs Service virtual IPs, NodePorts,
//! load-balancer and external IPs into the node's netfilter (nftables) from Services and
//! EndpointSlices. Runs in the node agent.
//!
//! Depends on: `client`, `api`, `config`. Must not depend on: `store`, `apiserver`.
