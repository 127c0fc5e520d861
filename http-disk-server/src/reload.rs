//! SIGHUP: re-read, without a restart and without dropping any client,
//! what may change while the server runs. The signal handler only asks
//! (`signals.rs`); the accept loop calls [`reload`]: the access policy
//! and the TLS certificate, each held in `State` as a [`Live`] value.

use std::sync::{Arc, RwLock};

use crate::server::State;

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
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn from_arc(value: Arc<T>) -> Live<T> {
        Live(RwLock::new(value))
    }

    pub fn replace(&self, value: T) {
        self.replace_arc(Arc::new(value));
    }

    pub fn replace_arc(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// Re-reads everything reloadable. A part that fails keeps its previous
/// value and logs why (file and line); the others still take effect.
pub fn reload(state: &State) {
    let sources = &state.config.policy_sources;
    match sources.load() {
        Ok(policy) => {
            let origin = if sources.has_files() {
                "files re-read"
            } else {
                "command line only, nothing to re-read"
            };
            let summary = policy.summary();
            // In force before it is said to be: whoever reads the log line
            // (an operator, a test) can rely on it.
            state.policy.replace(policy);
            log::info!("SIGHUP: access policy reloaded ({origin}): {summary}");
        }
        Err(e) => log::error!("SIGHUP: access policy NOT reloaded, the previous one stays: {e}"),
    }
    if let Some(tls) = &state.tls {
        // A renewed certificate: new connections get it, open ones keep
        // theirs.
        match tls.reload() {
            Ok(()) => log::info!(
                "SIGHUP: TLS certificate and key reloaded from {}",
                tls.cert_path().display()
            ),
            Err(e) => log::error!("SIGHUP: TLS NOT reloaded, the previous certificate stays: {e}"),
        }
    }
}
