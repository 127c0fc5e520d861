//! [`Live`]: a value that is replaced whole while readers keep the one
//! they took (the access policy, the TLS configuration; `reload.rs`
//! replaces them on SIGHUP).

use std::sync::{Arc, RwLock};

use lock_ext::RwLockIgnoringPoison;

/// A value that requests read and a reload replaces as a whole. A request
/// takes the current `Arc` once and uses it to the end, so it never sees
/// half of an old value and half of a new one; the lock is held only to
/// clone or swap the `Arc`, never while a file is read.
#[derive(Debug, Default)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(RwLock::new(Arc::new(value)))
    }

    pub fn current(&self) -> Arc<T> {
        // A poisoned lock still holds a whole Arc (replacing it is one
        // assignment): keep serving with it.
        Arc::clone(&self.0.read_ignoring_poison())
    }

    pub fn from_arc(value: Arc<T>) -> Live<T> {
        Live(RwLock::new(value))
    }

    pub fn replace(&self, value: T) {
        self.replace_arc(Arc::new(value));
    }

    pub fn replace_arc(&self, value: Arc<T>) {
        *self.0.write_ignoring_poison() = value;
    }
}
