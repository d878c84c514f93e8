//! `status --watch` in text: in a terminal, one screen redrawn in place (a header with the
//! time, then the status table); piped, one block of plain lines per change, each line
//! prefixed with the time, and no escape sequence at all.

use std::time::SystemTime;

use apim_proto::v1::ClusterStatus;

use super::tables;
use super::time::stamp;

/// Cursor home (the redraw starts at the top left).
const HOME: &str = "\x1b[H";
/// Clear to the end of the line (what a longer earlier line left).
const CLEAR_LINE: &str = "\x1b[K";
/// Clear from the cursor to the end of the screen (rows an earlier, longer table left).
const CLEAR_BELOW: &str = "\x1b[J";

/// The header of the terminal view.
pub fn header(now: SystemTime) -> String {
    format!(
        "apimctl status --watch    {}    (Ctrl-C to stop)",
        stamp(now)
    )
}

/// The terminal view of `status` at `now`: the whole screen, drawn over the previous one.
pub fn screen(status: &ClusterStatus, now: SystemTime) -> String {
    let mut s = String::from(HOME);
    let lines = std::iter::once(header(now))
        .chain(std::iter::once(String::new()))
        .chain(tables::status(status, now));
    for l in lines {
        s.push_str(&l);
        s.push_str(CLEAR_LINE);
        s.push('\n');
    }
    s.push_str(CLEAR_BELOW);
    s
}

/// The piped view of one change: the status lines, each prefixed with the time.
pub fn block(status: &ClusterStatus, now: SystemTime) -> Vec<String> {
    let t = stamp(now);
    tables::status(status, now)
        .into_iter()
        .map(|l| format!("{t} {l}"))
        .collect()
}
