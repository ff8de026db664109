//! Logging that never garbles a progress bar: records go to stderr (or a log file whose folder
//! is created on demand) and are printed above the bar, not through it.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use crate::sync::Mutex;

use anyhow::Context;
use indicatif::ProgressBar;

/// Where the progress bar is, when there is one, so that log lines are printed above it.
pub type BarSlot = Arc<Mutex<Option<ProgressBar>>>;

struct BarAwareLogger {
    inner: env_logger::Logger,
    bar: BarSlot,
}

impl log::Log for BarAwareLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.inner.matches(record) {
            return;
        }
        let bar = self.bar.lock().clone();
        match bar {
            Some(bar) => bar.suspend(|| self.inner.log(record)),
            None => self.inner.log(record),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Sets up `log` from RUST_LOG (default `default_level`), to `log_file` if given (its folder is
/// created) or else to stderr, above the progress bar in `bar`.
pub fn init_logging(
    default_level: &str,
    log_file: Option<&Path>,
    bar: BarSlot,
) -> anyhow::Result<()> {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    if let Some(path) = log_file {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the log folder {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the log file {}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
        builder.write_style(env_logger::WriteStyle::Never);
    }
    let inner = builder.build();
    let level = inner.filter();
    log::set_boxed_logger(Box::new(BarAwareLogger { inner, bar }))
        .context("logging was already set up")?;
    log::set_max_level(level);
    Ok(())
}
