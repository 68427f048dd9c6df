//! The console: where the init's own lines go, one at a time, each flushed
//! before anything else happens (the host reads them as they come).

use std::io::Write;

pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
