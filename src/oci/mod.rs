//! The OCI vocabulary, parsed at the edge into types that cannot hold a bad value:
//! digests, repository names, tags and references, manifests, and the error-code table.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{ErrorCode, RegistryError};
pub use manifest::{Descriptor, ParsedManifest};
pub use name::{Reference, RepoName, Tag};
