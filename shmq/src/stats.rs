//! The stats segment layout (issue 6). STUB.
#![allow(missing_docs)]
