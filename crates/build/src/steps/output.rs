//! What a step writes, read with bounded memory whatever it writes: lines
//! cut at `MAX_STEP_LINE` bytes, and the last few kept for its error.

use std::io::{BufRead, BufReader, Read};

use crate::event::MAX_STEP_LINE;

/// The last lines a step wrote, for its error.
#[derive(Default)]
pub struct Tail {
    pub lines: Vec<String>,
}

const TAIL_LINES: usize = 20;

impl Tail {
    pub fn push(&mut self, line: &str) {
        if self.lines.len() == TAIL_LINES {
            self.lines.remove(0);
        }
        self.lines.push(line.to_string());
    }
}

/// Splits `from` into lines (cut at `MAX_STEP_LINE` bytes, invalid UTF-8
/// replaced) for `each`; memory stays bounded whatever the step writes.
pub fn read_lines(from: Box<dyn Read + Send>, mut each: impl FnMut(String)) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut cut = false;
        let ended = loop {
            let buf = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            };
            if buf.is_empty() {
                break true;
            }
            let (take, newline) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_STEP_LINE.saturating_sub(line.len());
            let body = if newline { take - 1 } else { take };
            line.extend_from_slice(&buf[..body.min(room)]);
            cut |= body > room;
            reader.consume(take);
            if newline {
                break false;
            }
        };
        if !line.is_empty() || !ended {
            let mut text = String::from_utf8_lossy(&line).into_owned();
            if cut {
                text.push_str(" [cut]");
            }
            each(text);
        }
        if ended {
            return;
        }
    }
}
