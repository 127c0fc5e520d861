//! Things a benchmark drives: an nbdkit export (ours or a peer plugin)
//! on a Unix socket, started through the test harness so it is stopped
//! with its process group whatever happens; or, as a reference, the
//! backend driven directly (see `store_load` and `local_sync`).

use std::fs::File;
use std::path::Path;

use harness::Nbdkit;

use crate::local_sync::LocalSync;
use crate::results::Measured;
use crate::settings::Settings;
use crate::store_load::DirectStore;
use crate::workload::Workload;

/// What a comparison runs each workload on.
pub trait Target {
    fn name(&self) -> &str;
    /// How it was started, for the report.
    fn command(&self) -> &str;
    /// The client-side process whose CPU is accounted as the target's
    /// own (nbdkit; this process for a load sent from here).
    fn pid(&self) -> i32;
    /// Runs `workload` once; its figure in the workload's unit.
    fn run(&self, workload: &Workload, settings: &Settings) -> Result<Measured, String>;
    /// Called after each run, outside its measurement (time and CPU):
    /// waits for what the run left going in the background (a write-back
    /// cache's uploads) to finish, so that it neither counts against the
    /// next run, whichever target that is, nor goes unnoticed. An error
    /// fails the run.
    fn settle(&self) -> Result<(), String> {
        Ok(())
    }
}

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

impl Target for NbdTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn command(&self) -> &str {
        &self.command
    }

    fn pid(&self) -> i32 {
        NbdTarget::pid(self)
    }

    fn run(&self, workload: &Workload, settings: &Settings) -> Result<Measured, String> {
        workload.run(
            &self.uri(),
            settings.disk_size,
            settings.runtime,
            &settings.work,
        )
    }
}

impl Target for DirectStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn command(&self) -> &str {
        &self.command
    }

    fn pid(&self) -> i32 {
        std::process::id() as i32
    }

    fn run(&self, workload: &Workload, settings: &Settings) -> Result<Measured, String> {
        DirectStore::run(self, workload, settings.runtime).map(Measured::from)
    }
}

impl Target for LocalSync {
    fn name(&self) -> &str {
        &self.name
    }

    fn command(&self) -> &str {
        &self.command
    }

    fn pid(&self) -> i32 {
        std::process::id() as i32
    }

    fn run(&self, workload: &Workload, settings: &Settings) -> Result<Measured, String> {
        LocalSync::run(self, workload, settings.runtime)
    }
}

/// A target whose backing file is made durable (`fdatasync`) after each
/// of its runs, so that no run leaves dirty pages behind for the next
/// run's first `fdatasync` to write: a write-back run leaves seconds of
/// writes in the page cache.
pub struct SyncedAfterRun<'a> {
    pub inner: &'a dyn Target,
    pub file: &'a File,
}

impl Target for SyncedAfterRun<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn command(&self) -> &str {
        self.inner.command()
    }

    fn pid(&self) -> i32 {
        self.inner.pid()
    }

    fn run(&self, workload: &Workload, settings: &Settings) -> Result<Measured, String> {
        let measured = self.inner.run(workload, settings)?;
        self.file
            .sync_data()
            .map_err(|e| format!("fdatasync of the backing file after the run: {e}"))?;
        Ok(measured)
    }
}
