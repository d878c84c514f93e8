//! Confirmation for destructive commands (`revoke`, and any command that stops, removes or
//! rolls back): [`confirm`] asks on a terminal, and refuses when there is no terminal to ask
//! on and `--yes` was not given, so a script never destroys anything by accident nor hangs on
//! a question nobody sees. Commands take the flag by flattening [`Yes`].

use std::io::{BufRead, IsTerminal, Write};

use crate::error::CliError;

/// `--yes`/`-y`, for a command to `#[command(flatten)]`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Yes {
    /// Do not ask for confirmation (needed when standard input is not a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// Asks `question` (e.g. "Revoke vm-gw-1?") on the terminal and returns whether the operator
/// answered yes; `Ok(true)` at once with `assume_yes`. Without a terminal on stdin and
/// without `assume_yes`: [`CliError::NeedsConfirmation`] naming `what` (e.g. "revoke
/// vm-gw-1"). The question goes to stderr, so stdout stays the command's output.
pub fn confirm(what: &str, question: &str, assume_yes: bool) -> Result<bool, CliError> {
    if assume_yes {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    ask(
        what,
        question,
        stdin.is_terminal(),
        &mut stdin.lock(),
        &mut std::io::stderr(),
    )
}

/// [`confirm`] with its terminal given: whether stdin is one, what it reads, where it asks.
pub fn ask(
    what: &str,
    question: &str,
    terminal: bool,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<bool, CliError> {
    if !terminal {
        return Err(CliError::NeedsConfirmation {
            what: what.to_string(),
        });
    }
    let _ = write!(output, "{question} [y/N] ");
    let _ = output.flush();
    let mut answer = String::new();
    input
        .read_line(&mut answer)
        .map_err(CliError::io("stdin".as_ref()))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// [`confirm`], and [`CliError::NotConfirmed`] unless the answer is yes: for commands that do
/// nothing else when the operator declines.
pub fn require(what: &str, question: &str, assume_yes: bool) -> Result<(), CliError> {
    if confirm(what, question, assume_yes)? {
        Ok(())
    } else {
        Err(CliError::NotConfirmed {
            what: what.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(terminal: bool, typed: &str) -> (Result<bool, CliError>, String) {
        let mut out = Vec::new();
        let r = ask(
            "revoke vm-1",
            "Revoke vm-1?",
            terminal,
            &mut typed.as_bytes(),
            &mut out,
        );
        (r, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn only_yes_on_a_terminal_confirms() {
        for (typed, want) in [
            ("y\n", true),
            ("YES\n", true),
            (" yes \n", true),
            ("n\n", false),
            ("\n", false),
            ("", false),
            ("yeah\n", false),
        ] {
            let (r, shown) = asked(true, typed);
            assert_eq!(r.expect("asked"), want, "{typed:?}");
            assert_eq!(shown, "Revoke vm-1? [y/N] ");
        }
    }

    #[test]
    fn without_a_terminal_it_refuses_and_asks_nothing() {
        let (r, shown) = asked(false, "y\n");
        let e = r.expect_err("refused");
        assert!(matches!(e, CliError::NeedsConfirmation { .. }));
        assert_eq!(
            e.to_string(),
            "revoke vm-1 needs confirmation and standard input is not a terminal: pass --yes \
             to confirm"
        );
        assert_eq!(e.exit_code(), crate::cli::exit::USAGE);
        assert!(shown.is_empty());
        assert!(confirm("revoke vm-1", "Revoke vm-1?", true).expect("--yes"));
    }
}
