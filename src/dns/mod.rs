//! Cluster DNS (kaji's CoreDNS): answers `cluster.local` names from Services and
//! EndpointSlices and forwards the rest to the node's resolvers. Runs in the node agent.
//!
//! Depends on: `client`, `api`, `config`. Must not depend on: `store`, `apiserver`.
