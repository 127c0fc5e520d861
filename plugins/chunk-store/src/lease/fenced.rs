//! The lease in the write path: [`LeaseKeeper`] takes a disk's lease when
//! the first writer needs it, and [`Fenced`] checks it before every
//! backend mutation, so no write, delete or flush reaches the store once
//! the lease is another owner's.

use std::sync::{Arc, Mutex};

use lock_ext::LockIgnoringPoison;

use super::{identity, Lease, LeaseSettings, LeaseStore};
use crate::backend::{ChunkBackend, ChunkExtent};
use crate::error::StoreError;

/// A disk's lease, taken on first use and kept until [`LeaseKeeper::release`].
pub struct LeaseKeeper {
    store: Arc<dyn LeaseStore>,
    settings: LeaseSettings,
    held: Mutex<Option<Arc<Lease>>>,
}

impl LeaseKeeper {
    pub fn new(store: Arc<dyn LeaseStore>, settings: LeaseSettings) -> LeaseKeeper {
        LeaseKeeper {
            store,
            settings,
            held: Mutex::new(None),
        }
    }

    /// The lease, taken now if not yet held: for a writable open, and for
    /// opening a disk whose metadata must be written (create, grow). Once
    /// lost it is never taken again by this process: a writer that lost
    /// its disk stays read-only until restarted.
    pub fn for_writing(&self) -> Result<Arc<Lease>, StoreError> {
        let mut held = self.held.lock_ignoring_poison();
        if let Some(lease) = &*held {
            if let Some(why) = lease.lost() {
                return Err(StoreError::new(libc::EROFS, why));
            }
            return Ok(lease.clone());
        }
        let lease = Lease::acquire(self.store.clone(), self.settings, identity::this_process())?;
        *held = Some(lease.clone());
        Ok(lease)
    }

    /// Before a mutation: the lease is held and still ours. A write
    /// without it fails with EROFS (EPERM to the client).
    pub fn check(&self) -> Result<(), StoreError> {
        self.checked_token().map(drop)
    }

    /// [`LeaseKeeper::check`], returning the holding's token (what a
    /// write-back journal records as its writer).
    pub fn checked_token(&self) -> Result<u64, StoreError> {
        let lease = self.for_writing().map_err(|e| match e.errno {
            libc::EBUSY => StoreError::new(libc::EROFS, e.what),
            _ => e,
        })?;
        lease.check()?;
        Ok(lease.token())
    }

    /// For a writable open: `Err` (naming the owner) when another writer
    /// holds the lease or this one lost it. Any other failure to take it
    /// (the store refuses this key's writes, or cannot be reached) is
    /// logged and the connection served: its writes take the lease
    /// themselves, and fail as long as they cannot.
    pub fn open_for_writing(&self) -> Result<(), StoreError> {
        match self.for_writing() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.errno, libc::EBUSY | libc::EROFS) => Err(e),
            Err(e) => {
                log::warn!(
                    "{}: no lease yet, writes will fail until one is taken: {e}",
                    self.store.location()
                );
                Ok(())
            }
        }
    }

    /// At unload: stop renewing and remove the lease if still ours.
    pub fn release(&self) {
        if let Some(lease) = self.held.lock_ignoring_poison().take() {
            lease.release();
        }
    }
}

/// A backend whose every mutation first checks the lease.
pub struct Fenced<B> {
    inner: B,
    lease: LeaseKeeper,
}

impl<B> Fenced<B> {
    pub fn new(inner: B, lease: LeaseKeeper) -> Fenced<B> {
        Fenced { inner, lease }
    }

    pub fn lease(&self) -> &LeaseKeeper {
        &self.lease
    }

    #[cfg(test)]
    pub(crate) fn inner_for_tests(&self) -> &B {
        &self.inner
    }
}

impl<B: ChunkBackend> ChunkBackend for Fenced<B> {
    fn read(&self, index: u64, offset: u64, buf: &mut [u8]) -> Result<bool, StoreError> {
        self.inner.read(index, offset, buf)
    }

    fn write(&self, index: u64, offset: u64, data: &[u8], fua: bool) -> Result<(), StoreError> {
        self.lease.check()?;
        self.inner.write(index, offset, data, fua)
    }

    fn delete(&self, index: u64, fua: bool) -> Result<(), StoreError> {
        self.lease.check()?;
        self.inner.delete(index, fua)
    }

    fn delete_many(&self, indices: &[u64], fua: bool) -> Result<(), StoreError> {
        self.lease.check()?;
        self.inner.delete_many(indices, fua)
    }

    fn existing(&self, first: u64, last: u64) -> Result<Vec<u64>, StoreError> {
        self.inner.existing(first, last)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.lease.check()?;
        self.inner.flush()
    }

    fn partial_writes(&self) -> bool {
        self.inner.partial_writes()
    }

    fn zero_part(&self, index: u64, offset: u64, len: u64, fua: bool) -> Result<(), StoreError> {
        self.lease.check()?;
        self.inner.zero_part(index, offset, len, fua)
    }

    fn layout(&self, index: u64, offset: u64, len: u64) -> Result<Vec<ChunkExtent>, StoreError> {
        self.inner.layout(index, offset, len)
    }
}
