//! A reader that runs its source on another thread: decompression (and the
//! digest check under it) proceeds while the consumer parses and writes.
//! A few buffers in flight bound the memory it takes.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver};

const CHUNK: usize = 1 << 20;
const IN_FLIGHT: usize = 4;

pub struct ReadAhead {
    chunks: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ReadAhead {
    /// Starts reading `inner` on a thread of its own. If the `ReadAhead` is
    /// dropped early, the thread stops at its next chunk.
    pub fn new(mut inner: impl Read + Send + 'static) -> ReadAhead {
        let (tx, chunks) = mpsc::sync_channel(IN_FLIGHT);
        std::thread::Builder::new()
            .name("layer-read-ahead".into())
            .spawn(move || loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                let result = loop {
                    match inner.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let end = filled == 0;
                let failed = result.is_err();
                let sent = match result {
                    Ok(()) => tx.send(Ok(buf)),
                    Err(e) => tx.send(Err(e)),
                };
                if end || failed || sent.is_err() {
                    return;
                }
            })
            .expect("spawning a read-ahead thread");
        ReadAhead {
            chunks,
            current: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => return Err(io::Error::other("the read-ahead thread stopped")),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_everything_through_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK + 12345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut out = Vec::new();
        ReadAhead::new(io::Cursor::new(data.clone()))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn errors_arrive_after_the_data_before_them() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "digest mismatch",
                    ));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let mut r = ReadAhead::new(Failing(10));
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.to_string(), "digest mismatch");
    }
}
