//! Shared-memory segments: POSIX (`shm_open`, /dev/shm) and SysV (`shmget`, visible in `ipcs`).
//!
//! STUB: the API below is fixed; the implementation lands with issue 3 (shmq 2/2).
#![allow(missing_docs, dead_code, unused_variables)]

use std::io;
use std::path::PathBuf;

use crate::ring::Memory;

/// Which kernel facility backs a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `shm_open` + `mmap`: a file under /dev/shm.
    Posix,
    /// `shmget` + `shmat`: a key visible in `ipcs -m`.
    Sysv,
}

/// Why a segment could not be created.
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateError {
    /// A segment of that name exists already.
    Exists { name: String },
    /// The kernel refused (`source` says why); `name` is the segment.
    Io { name: String, source: io::Error },
}

/// Why a segment could not be attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttachError {
    /// No segment of that name.
    NotFound { name: String },
    /// The kernel refused.
    Io { name: String, source: io::Error },
}

/// A mapped segment. Writable unless attached read-only.
#[derive(Debug)]
pub struct Segment {
    ptr: *mut u8,
    len: usize,
    read_only: bool,
    backend: Backend,
    name: String,
}

impl Segment {
    /// Creates a new segment exclusively, `len` bytes, zeroed, pages reserved, mode e.g. 0o600.
    pub fn create(backend: Backend, name: &str, len: usize, mode: u32) -> Result<Self, CreateError> {
        todo!("issue 3")
    }
    /// Attaches an existing segment; `writable = false` maps it read-only (O_RDONLY + PROT_READ /
    /// SHM_RDONLY): the mapping cannot change a byte.
    pub fn attach(backend: Backend, name: &str, writable: bool) -> Result<Self, AttachError> {
        todo!("issue 3")
    }
    /// Removes a segment by name (shm_unlink / IPC_RMID). Ok(false) if it did not exist.
    pub fn remove(backend: Backend, name: &str) -> io::Result<bool> {
        todo!("issue 3")
    }
    /// Base address (read-only segments: never write through it).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// Where an operator finds it: `/dev/shm/NAME` or `SysV key 0x…`.
    pub fn location(&self) -> PathBuf {
        todo!("issue 3")
    }
}

// SAFETY (stub): see issue 3.
unsafe impl Send for Segment {}
// SAFETY (stub): see issue 3.
unsafe impl Sync for Segment {}
// SAFETY (stub): see issue 3. Read-only segments must never be given to a ring.
unsafe impl Memory for Segment {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}
