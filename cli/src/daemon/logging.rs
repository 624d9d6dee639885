//! Logging to stderr only (never to files: flash is precious), filtered by `--verbose`
//! as Tailscale does: 0 shows info and above, 1 adds debug, 2 and more add trace.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let tag = match r.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "[v1] ",
            Level::Trace => "[v2] ",
        };
        // One write per line so concurrent threads do not interleave within a line.
        let line = format!("{tag}{}\n", r.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

pub fn init(verbosity: i32) {
    let level = match verbosity {
        i32::MIN..=0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}
