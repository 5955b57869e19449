//! The shared cache segment of the `kv` service (`{shared.name}.kv`): io_conn creates it at start
//! when a listener serves `kv` (replacing a dead predecessor's, refusing a live one's or one
//! another uid owns), and removes it at exit. md attaches it (`md::services::kv`). The layout
//! and every operation are in [`shmq::cache`].
//!
//! The cache does not survive an io_conn restart: each start creates it empty (its clients'
//! connections do not survive either, io_conn owns them). It survives md restarts and crashes.

use anyhow::Context;
use config::Config;
use shmq::cache::{Cache, segment_name};
use shmq::region::{Backend, Segment};
use shmq::sys::{Liveness, ProcId};

/// The cache segment io_conn owns.
#[derive(Debug)]
pub(crate) struct KvCache {
    backend: Backend,
    name: String,
    removed: bool,
}

impl KvCache {
    /// Creates `{name}.kv` if a listener serves `kv`; `None` otherwise.
    pub(crate) fn create(
        cfg: &Config,
        backend: Backend,
        epoch: u64,
    ) -> anyhow::Result<Option<Self>> {
        if !cfg.serves_kv() {
            return Ok(None);
        }
        let name = &cfg.shared.name;
        let seg = segment_name(name);
        remove_stale(backend, name, &seg)?;
        let cache = Cache::create(backend, name, cfg.kv.max_keys, cfg.kv.memory, epoch)
            .with_context(|| format!("creating cache segment {seg}"))?;
        let p = cache.plan();
        log::info!(
            "created cache segment {seg}: {} keys in {} slots ({} rows), {} chunks of {} B ({} B)",
            cfg.kv.max_keys,
            p.total_slots,
            shmq::cache::ROWS,
            p.chunks,
            shmq::cache::CHUNK_BYTES,
            p.total_len
        );
        drop(cache); // io_conn never uses the table itself: md does.
        Ok(Some(Self { backend, name: name.clone(), removed: false }))
    }

    /// Removes the segment (idempotent). md's mappings stay valid until md notices.
    pub(crate) fn remove(&mut self) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        if let Err(e) = Cache::remove(self.backend, &self.name) {
            log::warn!("removing cache segment {}: {e}", segment_name(&self.name));
        }
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes a leftover `{name}.kv` whose creator is dead (a crashed io_conn). Refuses if its
/// creator runs, if another uid owns it, or if it is ours but no cache segment.
fn remove_stale(backend: Backend, name: &str, seg: &str) -> anyhow::Result<()> {
    let what = Segment::location_of(backend, seg);
    match Segment::owner(backend, seg).with_context(|| format!("looking at {what}"))? {
        None => return Ok(()),
        Some(uid) if uid != nix::unistd::geteuid().as_raw() => anyhow::bail!(
            "{what} is owned by uid {uid}, not us: remove it or choose another shared.name"
        ),
        Some(_) => {}
    }
    match Cache::attach(backend, name) {
        Ok(c) => {
            let creator = c.creator();
            if creator != ProcId::current() && creator.liveness() == Liveness::Alive {
                anyhow::bail!(
                    "cache segment {seg} belongs to a running process (pid {}): is another \
                     io_conn with shared.name = {name:?} running?",
                    creator.pid
                );
            }
            log::warn!("replacing stale cache segment {seg} left by pid {}", creator.pid);
        }
        Err(shmq::cache::CacheError::Attach(shmq::region::AttachError::NotFound { .. })) => {
            return Ok(());
        }
        Err(shmq::cache::CacheError::Invalid { what: w }) if w.starts_with("magic") => {
            anyhow::bail!(
                "{what} is not a shmsrv cache segment ({w}); not removing it: remove it or \
                 choose another shared.name"
            )
        }
        Err(e) => log::warn!("replacing unusable cache segment {seg} ({e})"),
    }
    Cache::remove(backend, name).with_context(|| format!("removing stale cache segment {seg}"))?;
    Ok(())
}
