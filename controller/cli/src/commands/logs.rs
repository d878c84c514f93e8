//! `apimctl logs NODE [-f] [-n N] [--file NAME]`: the tail of a node's server log (or another
//! file of its log folder), read by its agent; with `-f`, what is appended until interrupted.
//! The text comes from the machine: every control character but newline and tab is shown
//! escaped, so a log line cannot drive the terminal.

use std::io::Write;

use apim_proto::text::printable;
use apim_proto::v1::LogsRequest;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;

/// `apimctl logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node.
    node: String,
    /// Keep printing what is appended (follows truncation and rotation) until interrupted.
    #[arg(short = 'f', long)]
    follow: bool,
    /// How many lines from the end to print first (at most 10000).
    #[arg(short = 'n', long, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    lines: u32,
    /// A file of the node's log folder (default: its server log).
    #[arg(long, value_name = "NAME")]
    file: Option<String>,
}

/// Text of a log with its control characters escaped, newlines and tabs kept.
pub fn escape_log(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for piece in s.split_inclusive(['\n', '\t']) {
        let (body, end) = match piece.char_indices().last() {
            Some((i, c @ ('\n' | '\t'))) => (&piece[..i], Some(c)),
            _ => (piece, None),
        };
        out.push_str(&printable(body));
        if let Some(c) = end {
            out.push(c);
        }
    }
    out
}

/// Turns log bytes into text, keeping an incomplete UTF-8 sequence at the end of a piece for
/// the next one (a piece may end in the middle of a character).
#[derive(Debug, Default)]
struct Decoder {
    carry: Vec<u8>,
}

impl Decoder {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(&self.carry) {
            Ok(_) => 0,
            // An incomplete sequence at the very end: wait for the rest (at most 3 bytes).
            Err(e) if e.error_len().is_none() => self.carry.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let whole = self.carry.len() - keep;
        let text = String::from_utf8_lossy(&self.carry[..whole]).into_owned();
        self.carry.drain(..whole);
        escape_log(&text)
    }
}

/// Runs `apimctl logs`.
pub async fn run(
    args: Args,
    settings: Settings,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let mut stream = op
        .logs(LogsRequest {
            node: args.node,
            file: args.file.unwrap_or_default(),
            lines: args.lines,
            follow: args.follow,
        })
        .await
        .map_err(CliError::Refused)?
        .into_inner();
    let mut decoder = Decoder::default();
    loop {
        let chunk = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Exit::Success),
            Err(status) => return Err(CliError::Refused(status)),
        };
        if !chunk.notice.is_empty() {
            let _ = writeln!(stderr, "-- {} --", printable(&chunk.notice));
        }
        let text = decoder.push(&chunk.data);
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            // The reader has what it wanted (`apimctl logs gw-1 -f | grep -m1 ERROR`).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(Exit::Success),
            Err(source) => {
                return Err(CliError::Io {
                    path: "stdout".into(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_but_lines_and_tabs_kept() {
        assert_eq!(
            escape_log("a\tb\nok\u{1b}[2J\u{1b}]0;title\u{7}\r\nlast"),
            "a\tb\nok\\e[2J\\e]0;title\\u{7}\\r\nlast"
        );
        assert_eq!(escape_log("plain\n"), "plain\n");
        assert_eq!(escape_log("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn characters_split_between_pieces_are_joined() {
        let mut d = Decoder::default();
        let e = "é".as_bytes();
        assert_eq!(d.push(&[b'c', b'a', b'f', e[0]]), "caf");
        assert_eq!(d.push(&[e[1], b'\n']), "é\n");
        // Invalid bytes are replaced, not carried.
        assert_eq!(d.push(&[0xff, b'x']), "\u{fffd}x");
    }
}
