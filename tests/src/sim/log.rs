//! `wso2carbon.log` and console output in the real Carbon layouts (research §4).
//!
//! File: `TID: [%tenantId] [%appName] [%d] %5p {%c} - %m%ex%n`
//! Console: `[%d{DEFAULT}] %5p - %c{1} %m%n`

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use time::OffsetDateTime;

/// Log levels used by the simulated server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Normal progress.
    Info,
    /// Something odd, startup goes on.
    Warn,
    /// A failure (startup may still go on, as in the real server).
    Error,
}

impl Level {
    fn padded(self) -> &'static str {
        match self {
            Level::Info => " INFO",
            Level::Warn => " WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Timestamp as log4j's `%d` (`2024-05-02 10:11:12,123`), in UTC.
pub fn timestamp() -> String {
    let t = OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The server's logger: appends to `wso2carbon.log` and echoes to stdout.
pub struct CarbonLog {
    file: Mutex<Option<File>>,
}

impl CarbonLog {
    /// Opens (appending, creating parents) the log file; without it only the console is used.
    pub fn open(path: &Path) -> CarbonLog {
        if let Some(parent) = path.parent() {
            // A missing logs dir is recreated like log4j does; failure leaves console only.
            let _ = std::fs::create_dir_all(parent);
        }
        let file = OpenOptions::new().create(true).append(true).open(path).ok();
        CarbonLog {
            file: Mutex::new(file),
        }
    }

    /// Writes one event; `logger` is the fully qualified class name.
    pub fn log(&self, level: Level, logger: &str, msg: &str) {
        let ts = timestamp();
        let line = format!(
            "TID: [-1234] [] [{ts}] {} {{{logger}}} - {msg}\n",
            level.padded()
        );
        if let Ok(mut guard) = self.file.lock()
            && let Some(f) = guard.as_mut()
        {
            // Logging must never take the server down; a full disk just loses lines.
            let _ = f.write_all(line.as_bytes());
        }
        let short = logger.rsplit('.').next().unwrap_or(logger);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{ts}] {} - {short} {msg}", level.padded());
    }

    /// Info shorthand.
    pub fn info(&self, logger: &str, msg: &str) {
        self.log(Level::Info, logger, msg);
    }

    /// Warning shorthand.
    pub fn warn(&self, logger: &str, msg: &str) {
        self.log(Level::Warn, logger, msg);
    }

    /// Error shorthand.
    pub fn error(&self, logger: &str, msg: &str) {
        self.log(Level::Error, logger, msg);
    }
}
