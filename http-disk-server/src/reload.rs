//! SIGHUP: re-read, without a restart and without dropping any client,
//! what may change while the server runs. The signal handler only asks
//! (`signals.rs`); the accept loop calls [`reload`]: the access policy
//! and the TLS certificate, each held in `State` as a [`Live`](crate::live::Live) value.

use crate::state::State;

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
