//! Things a benchmark drives: an nbdkit export (ours or a peer plugin)
//! on a Unix socket, started through the test harness so it is stopped
//! with its process group whatever happens.

use std::path::Path;

use harness::Nbdkit;

/// One nbdkit export under test.
pub struct NbdTarget {
    pub name: String,
    pub nbdkit: Nbdkit,
    /// The command line, for the report.
    pub command: String,
}

impl NbdTarget {
    /// `nbdkit -f -U SOCK [options] PLUGIN params...`; `plugin` is a path
    /// to our `.so` or the name of one of nbdkit's own plugins. Fails with
    /// nbdkit's own words when it does not come up.
    pub fn start(
        name: &str,
        options: &[&str],
        plugin: &Path,
        params: &[String],
    ) -> Result<NbdTarget, String> {
        Self::start_wrapped(name, &[], options, plugin, params)
    }

    /// As [`NbdTarget::start`], nbdkit run through `wrapper` (e.g. `env
    /// VAR=value` for a peer plugin configured by its environment).
    pub fn start_wrapped(
        name: &str,
        wrapper: &[&str],
        options: &[&str],
        plugin: &Path,
        params: &[String],
    ) -> Result<NbdTarget, String> {
        let params_ref: Vec<&str> = params.iter().map(String::as_str).collect();
        let nbdkit =
            Nbdkit::try_start_wrapped(wrapper, options, plugin, &params_ref).map_err(|proc| {
                format!(
                    "nbdkit with {} did not start: {}",
                    plugin.display(),
                    proc.output.snapshot().join(" | ")
                )
            })?;
        let command = format!(
            "nbdkit -f -U SOCK {}{} {}",
            options.iter().map(|o| format!("{o} ")).collect::<String>(),
            plugin.display(),
            params.join(" ")
        );
        Ok(NbdTarget {
            name: name.to_owned(),
            nbdkit,
            command,
        })
    }

    pub fn uri(&self) -> String {
        self.nbdkit.uri()
    }

    pub fn pid(&self) -> i32 {
        self.nbdkit.proc.pid()
    }
}
