//! Command results on stdout. A reader that goes away (`oprun runs list |
//! head -3`) ends the command quietly, as Unix tools end on SIGPIPE, where
//! `println!` panics with a backtrace.

use std::io::{ErrorKind, Write};

use crate::app::{CliError, CliResult};

/// Write one line to stdout: [`CliError::StdoutClosed`] when the reader has
/// gone, a runtime error for any other write failure.
pub fn line(args: std::fmt::Arguments<'_>) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.write_all(b"\n")).map_err(|e| match e.kind() {
        ErrorKind::BrokenPipe => CliError::StdoutClosed,
        _ => CliError::Runtime(format!("cannot write to stdout: {e}")),
    })
}

/// `println!` through [`line`]: `outln!(…)?`.
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
