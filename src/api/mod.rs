//! Kubernetes API vocabulary, with no IO: the resource table, `Status` builders,
//! label and field selectors, and object-metadata validation rules.
//!
//! Depends on: k8s-openapi types, serde_json. Must not depend on: `store`, `apiserver`,
//! or anything that performs IO.

pub mod quantity;
pub mod quota;
pub mod resources;
pub mod selector;
pub mod status;
pub mod validation;

pub use k8s_openapi;
pub use resources::{RESOURCES, ResourceInfo};
