//! Every error the registry can answer with, in one table: the spec's code, the HTTP status,
//! and the default message. The JSON body is built from this in one place (`http::reply`).

use std::fmt;

/// The error codes of the distribution spec ("Error Codes" table), plus `UNKNOWN` for
/// failures that are ours rather than the client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unknown,
}

impl ErrorCode {
    /// (code, HTTP status, message): the one table.
    fn row(self) -> (&'static str, u16, &'static str) {
        use ErrorCode::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", 404, "blob unknown to registry"),
            BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", 400, "blob upload invalid"),
            BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                404,
                "blob upload unknown to registry",
            ),
            DigestInvalid => (
                "DIGEST_INVALID",
                400,
                "provided digest did not match uploaded content",
            ),
            ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                400,
                "manifest references a manifest or blob unknown to registry",
            ),
            ManifestInvalid => ("MANIFEST_INVALID", 400, "manifest invalid"),
            ManifestUnknown => ("MANIFEST_UNKNOWN", 404, "manifest unknown to registry"),
            NameInvalid => ("NAME_INVALID", 400, "invalid repository name"),
            NameUnknown => ("NAME_UNKNOWN", 404, "repository name not known to registry"),
            SizeInvalid => (
                "SIZE_INVALID",
                400,
                "provided length did not match content length",
            ),
            Unauthorized => ("UNAUTHORIZED", 401, "authentication required"),
            Denied => ("DENIED", 403, "requested access to the resource is denied"),
            Unsupported => ("UNSUPPORTED", 405, "the operation is unsupported"),
            TooManyRequests => ("TOOMANYREQUESTS", 429, "too many requests"),
            // The spec's table has no code for a read range, and a 4xx JSON body MUST use one
            // of its codes; SIZE_INVALID ("length did not match content length") is the nearest.
            RangeInvalid => ("SIZE_INVALID", 416, "requested range not satisfiable"),
            Unknown => ("UNKNOWN", 500, "unknown error"),
        }
    }

    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    pub fn status(self) -> u16 {
        self.row().1
    }

    pub fn default_message(self) -> &'static str {
        self.row().2
    }
}

/// A failure to answer with: a code, a message for people, an optional structured detail,
/// and (rarely) a status other than the code's own, such as 416 for an out-of-order chunk.
#[derive(Debug)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    pub status: Option<u16>,
    /// Extra response headers, such as the `WWW-Authenticate` challenge of a 401.
    pub headers: Vec<(&'static str, String)>,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError {
            code,
            message: message.into(),
            detail: None,
            status: None,
            headers: Vec::new(),
        }
    }

    pub fn code(code: ErrorCode) -> RegistryError {
        RegistryError::new(code, code.default_message())
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> RegistryError {
        self.detail = Some(detail);
        self
    }

    pub fn with_status(mut self, status: u16) -> RegistryError {
        self.status = Some(status);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> RegistryError {
        self.headers.push((name, value.into()));
        self
    }

    pub fn status(&self) -> u16 {
        self.status.unwrap_or_else(|| self.code.status())
    }

    /// The disk is (nearly) full: the spec has no code for it, so `DENIED` with
    /// 507 Insufficient Storage, which clients show with the message.
    pub fn storage_full(message: impl Into<String>) -> RegistryError {
        RegistryError::new(ErrorCode::Denied, message).with_status(507)
    }

    /// An internal failure: logged in full by the caller, answered as `UNKNOWN`.
    pub fn internal(err: impl fmt::Display) -> RegistryError {
        RegistryError::new(ErrorCode::Unknown, err.to_string())
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RegistryError {}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            return RegistryError::storage_full("the registry's disk is full");
        }
        RegistryError::internal(format!("i/o: {e}"))
    }
}

impl From<crate::db::DbError> for RegistryError {
    fn from(e: crate::db::DbError) -> Self {
        RegistryError::internal(format!("database: {e}"))
    }
}
