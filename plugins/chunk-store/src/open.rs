//! Opening a disk's metadata: the one sequence both backends follow
//! (sharded's directory, s3's prefix), so they cannot drift apart.
//!
//! 1. Read the stored metadata, if any.
//! 2. None, but other data is there: refuse. Turning what is not a disk
//!    of ours into one would overwrite someone's files or objects.
//! 3. Decide the metadata from what is stored and what was asked
//!    ([`reconcile`]: create with `size=`, grow with `grow=true`, refuse
//!    any other change).
//! 4. Store it when it is new or grew, before any chunk is written, after
//!    `before_write` (which takes the writer's lease: creating or growing
//!    a disk is a write).

use crate::error::StoreError;
use crate::metadata::{reconcile, Metadata, Request};

/// Where a disk's metadata lives.
pub trait MetadataStore {
    /// Where the disk is, for messages (`/srv/vol`, `bucket/prefix`).
    fn location(&self) -> String;
    /// The metadata's name there, for messages.
    fn metadata_name(&self) -> String;
    /// The stored metadata's bytes, `None` when there are none.
    fn read_metadata(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// When there is no metadata: the refusal naming what is there
    /// instead, or `None` when there is nothing.
    fn foreign_data(&self) -> Result<Option<String>, StoreError>;
    /// Stores `metadata` durably and atomically (the old or the new one
    /// after a crash).
    fn write_metadata(&self, metadata: &Metadata) -> Result<(), StoreError>;
}

fn einval(why: String) -> StoreError {
    StoreError::new(libc::EINVAL, why)
}

/// Opens (or creates, or grows, as `request` asks) the disk's metadata
/// in `store`. Errors are EINVAL with what is wrong and where, except
/// the store's own (EIO, EPERM...).
pub fn open_metadata(
    store: &dyn MetadataStore,
    request: &Request,
    before_write: &dyn Fn() -> Result<(), StoreError>,
) -> Result<Metadata, StoreError> {
    let stored = match store.read_metadata()? {
        Some(bytes) => Some(
            Metadata::parse(&bytes)
                .map_err(|e| einval(format!("{}: {e}", store.metadata_name())))?,
        ),
        None => {
            if let Some(refusal) = store.foreign_data()? {
                return Err(einval(refusal));
            }
            None
        }
    };
    let (metadata, write) =
        reconcile(stored, request).map_err(|e| einval(format!("{}: {e}", store.location())))?;
    if write {
        before_write()?;
        store.write_metadata(&metadata)?;
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct InMemory {
        metadata: RefCell<Option<Vec<u8>>>,
        other_data: bool,
    }

    impl MetadataStore for InMemory {
        fn location(&self) -> String {
            "mem".into()
        }
        fn metadata_name(&self) -> String {
            "mem/meta".into()
        }
        fn read_metadata(&self) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.metadata.borrow().clone())
        }
        fn foreign_data(&self) -> Result<Option<String>, StoreError> {
            Ok(self.other_data.then(|| "mem holds data: not a disk".into()))
        }
        fn write_metadata(&self, metadata: &Metadata) -> Result<(), StoreError> {
            *self.metadata.borrow_mut() = Some(metadata.to_bytes());
            Ok(())
        }
    }

    fn asking(size: Option<u64>, allow_grow: bool) -> Request {
        Request {
            size,
            allow_grow,
            ..Request::default()
        }
    }

    #[test]
    fn creates_reopens_grows_and_refuses_what_is_not_ours() {
        let store = InMemory::default();
        let lease_takes = std::cell::Cell::new(0);
        let hook = || {
            lease_takes.set(lease_takes.get() + 1);
            Ok(())
        };
        let e = open_metadata(&store, &asking(None, false), &hook).unwrap_err();
        assert!(e.to_string().contains("give size="), "{e}");
        let created = open_metadata(&store, &asking(Some(1 << 20), false), &hook).unwrap();
        assert_eq!(created.size, 1 << 20);
        assert_eq!(lease_takes.get(), 1, "creating takes the lease first");
        assert_eq!(
            open_metadata(&store, &asking(None, false), &hook).unwrap(),
            created
        );
        assert!(open_metadata(&store, &asking(Some(2 << 20), false), &hook).is_err());
        let grown = open_metadata(&store, &asking(Some(2 << 20), true), &hook).unwrap();
        assert_eq!(
            open_metadata(&store, &asking(None, false), &hook).unwrap(),
            grown
        );
        assert_eq!(lease_takes.get(), 2, "growing takes it; reopening does not");
        let foreign = InMemory {
            other_data: true,
            ..InMemory::default()
        };
        let e = open_metadata(&foreign, &asking(Some(1 << 20), false), &hook).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.to_string().contains("not a disk"), "{e}");
        assert!(foreign.metadata.borrow().is_none(), "nothing written");
    }
}
