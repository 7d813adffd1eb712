//! kaji: a lightweight Kubernetes distribution in one executable.
//!
//! The layers, bottom-up (a module may use only the ones below it):
//!
//! | layer | modules | role |
//! |---|---|---|
//! | L0 | [`config`], [`api`] | flags and config file; Kubernetes vocabulary without IO |
//! | L1 | [`store`], [`pki`], [`client`], [`netfilter`], [`httprelay`], [`reflect`] | versioned KV store; certificates; API clients; running `nft`; HTTP upgrade relay; watch-and-wake reflectors |
//! | L2 | [`apiserver`] | the only user of the store |
//! | L2 | [`controllers`], [`scheduler`], [`agent`], [`proxy`], [`netpol`], [`dns`], [`ingress`] | API clients only |
//! | L3 | [`cmd`] | wires the roles together |
//!
//! See docs/ARCHITECTURE.md for the full picture.

pub mod agent;
pub mod api;
pub mod apiserver;
pub mod client;
pub mod cmd;
pub mod config;
pub mod controllers;
pub mod dns;
pub mod httprelay;
pub mod ingress;
pub mod netfilter;
pub mod netpol;
pub mod pki;
pub mod proxy;
pub mod reflect;
pub mod scheduler;
pub mod store;
