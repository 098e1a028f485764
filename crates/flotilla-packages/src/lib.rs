//! Elastic's package format, as Kibana reads it.
//!
//! - [`package`]: a package from its files, checked (`manifest.yml`, data
//!   stream manifests, agent templates, variable declarations);
//! - [`archive`]: zip and gzip'd tar uploads unpacked, safely;
//! - [`render`]: agent templates rendered as Kibana renders them;
//! - [`policy`]: package policies resolved against their package
//!   (Kibana's full and simplified bodies, defaults, validation), and
//!   compiled into the agent's inputs and the output permissions.

pub mod manifest;
pub mod package;
pub mod render;

pub use package::{Files, Package, PackageError};
pub mod archive;
pub mod builtin;
pub mod compile;
pub mod policy;
pub mod provider_permissions;
