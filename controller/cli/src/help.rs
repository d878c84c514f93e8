//! The end of every command's `--help`: examples, then the exit codes. Each command builds its
//! text with [`help!`](crate::help!) and one of the exit-code sections below, and names it in its
//! clap attribute:
//!
//! ```ignore
//! #[command(after_long_help = crate::help!(
//!     ["apimctl status", "apimctl status --watch"],
//!     crate::exit_codes_controller!()
//! ))]
//! ```
//!
//! A test checks that every subcommand's long help has both sections; the codes themselves are
//! [`crate::cli::exit`].

/// `Examples:` with one line per example, then an exit-code section.
#[macro_export]
macro_rules! help {
    ([$($example:literal),+ $(,)?], $codes:expr) => {
        concat!("Examples:\n", $("  ", $example, "\n",)+ "\n", $codes)
    };
}

/// The exit codes of a command that works offline (`validate`, `render`, `completions`, …).
#[macro_export]
macro_rules! exit_codes_offline {
    () => {
        concat!(
            "Exit codes:\n",
            "  0  success\n",
            "  1  the plan has errors, or a file could not be read or written\n",
            "  2  usage error (unknown flag, missing argument)"
        )
    };
}

/// The exit codes of a command that calls the controller once.
#[macro_export]
macro_rules! exit_codes_controller {
    () => {
        concat!(
            "Exit codes:\n",
            "  0  success\n",
            "  1  the controller refused the request, or it failed\n",
            "  2  usage error (unknown flag, missing argument; a destructive command with no\n",
            "     terminal to confirm on and no --yes)\n",
            "  3  the controller could not be reached (nothing listens, no answer, the TLS\n",
            "     handshake failed); the hint names the address and the files used"
        )
    };
}

/// The exit codes of a command that starts a rollout and follows it (`apply`, `rollback`).
#[macro_export]
macro_rules! exit_codes_rollout {
    () => {
        concat!(
            "Exit codes:\n",
            "  0  the rollout succeeded (or nothing to change; with --no-wait: stored and\n",
            "     started)\n",
            "  1  the rollout failed, was rolled back or aborted; or the plan was refused\n",
            "  2  usage error (unknown flag, missing argument)\n",
            "  3  the controller could not be reached (nothing listens, no answer, the TLS\n",
            "     handshake failed); the hint names the address and the files used"
        )
    };
}

/// The exit codes of `plan`.
#[macro_export]
macro_rules! exit_codes_plan {
    () => {
        concat!(
            "Exit codes:\n",
            "  0  nothing would change\n",
            "  1  error: the plan has errors or the controller refused it\n",
            "  2  something would change (and usage errors: unknown flag, missing argument)\n",
            "  3  the controller could not be reached (nothing listens, no answer, the TLS\n",
            "     handshake failed); the hint names the address and the files used"
        )
    };
}

/// The exit codes of `check`.
#[macro_export]
macro_rules! exit_codes_check {
    () => {
        concat!(
            "Exit codes:\n",
            "  0  every asked node was checked and none drifted\n",
            "  1  drift found, or a machine could not be checked (not connected, no answer in\n",
            "     time, a node busy converging: the output says which); or the controller\n",
            "     refused the request\n",
            "  2  usage error (unknown flag, missing argument)\n",
            "  3  the controller could not be reached (nothing listens, no answer, the TLS\n",
            "     handshake failed); the hint names the address and the files used"
        )
    };
}

/// The exit codes of `controllers`.
#[macro_export]
macro_rules! exit_codes_controllers {
    () => {
        concat!(
            "Exit codes:\n",
            "  0  exactly one controller leads rollouts (controllers on different versions are\n",
            "     a warning only, on stderr: a rolling upgrade passes through that state)\n",
            "  1  no controller holds the rollout lease (rollouts wait until one does), or\n",
            "     several claim it; or the controller refused the request\n",
            "  2  usage error (unknown flag, missing argument)\n",
            "  3  no controller could be reached (nothing listens, no answer, the TLS\n",
            "     handshake failed); the hint names the address and the files used"
        )
    };
}

/// The exit codes of the commands run on the controller host (`controller …`).
#[macro_export]
macro_rules! exit_codes_daemon {
    () => {
        concat!(
            "Exit codes:\n",
            "  0  success (the daemon: stopped by a signal)\n",
            "  1  the configuration, the data directory or the CA could not be used\n",
            "  2  usage error (unknown flag, missing argument)"
        )
    };
}

/// The top-level help's end: a few examples, the exit codes of every command, and where JSON
/// errors go.
pub const TOP: &str = concat!(
    "Examples:\n",
    "  apimctl validate plan.toml\n",
    "  apimctl plan plan.toml && apimctl apply plan.toml\n",
    "  apimctl status --watch\n",
    "  apimctl completions bash > /etc/bash_completion.d/apimctl\n",
    "\n",
    "Exit codes (each command's --help has its own):\n",
    "  0  success\n",
    "  1  failed: what was asked did not happen (a rollout failed, the plan has errors, the\n",
    "     controller refused)\n",
    "  2  usage error; for `plan`: something would change\n",
    "  3  the controller could not be reached\n",
    "\n",
    "With -o json a command prints exactly one JSON document on stdout, its errors included\n",
    "({\"error\": {\"code\", \"message\", \"hint\", \"details\", \"exit_code\"}}); `status --watch -o json`\n",
    "prints one document per change (JSON Lines)."
);
