//! The built-in ingress controller (kaji's Traefik): an HTTP/HTTPS reverse proxy on the
//! node's ports 80 and 443 routing by Ingress rules to Service endpoints. Runs in the node
//! agent.
//!
//! Depends on: `client`, `api`, `config`. Must not depend on: `store`, `apiserver`.
