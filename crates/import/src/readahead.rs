//! A reader that runs its source on another thread: decompression (and the
//! digest check under it) proceeds while the consumer parses and writes.
//! A few buffers in flight bound the memory it takes; they go back to the
//! thread once read, so a long stream is not a long run of fresh
//! allocations (each a megabyte of page faults).

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};

const CHUNK: usize = 1 << 20;
/// Chunks a stream may have in flight unless told otherwise.
const IN_FLIGHT: usize = 4;

/// A chunk read: the buffer and how much of it holds data (0: the end).
pub type Chunk<B> = (B, usize);

/// One producing thread's ends: its chunks, and where spent buffers go back.
pub type Lane<B> = (Receiver<io::Result<Chunk<B>>>, SyncSender<B>);

/// Chunks made by one or more threads, read in turn: with `n` threads, the
/// `t`-th gives chunks `t`, `t + n`, ... of the stream. A chunk of no data
/// ends it; an error ends it after the data before it.
pub struct Chunks<B> {
    lanes: Vec<Lane<B>>,
    next: usize,
    /// The chunk being read and the lane it came from.
    current: Option<(Chunk<B>, usize)>,
    pos: usize,
    done: bool,
}

impl<B: AsRef<[u8]>> Chunks<B> {
    pub fn new(lanes: Vec<Lane<B>>) -> Chunks<B> {
        Chunks {
            lanes,
            next: 0,
            current: None,
            pos: 0,
            done: false,
        }
    }

    fn available(&self) -> usize {
        self.current.as_ref().map_or(0, |((_, n), _)| *n)
    }
}

/// The chunks as they came, without a copy: for a consumer that only looks
/// at the bytes (a hash, a compressor).
impl<B: AsRef<[u8]>> BufRead for Chunks<B> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.available() {
            if self.done {
                return Ok(&[]);
            }
            let t = self.next;
            self.next = (t + 1) % self.lanes.len();
            match self.lanes[t].0.recv() {
                Ok(Ok((_, 0))) => self.done = true,
                Ok(Ok(chunk)) => {
                    if let Some(((old, _), from)) = self.current.replace((chunk, t)) {
                        // The thread may have stopped or have enough: then it goes.
                        let _ = self.lanes[from].1.try_send(old);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => return Err(io::Error::other("a read-ahead thread stopped")),
            }
        }
        let ((buf, n), _) = self.current.as_ref().expect("filled above");
        Ok(&buf.as_ref()[self.pos..*n])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.available());
    }
}

impl<B: AsRef<[u8]>> Read for Chunks<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let data = self.fill_buf()?;
        let n = buf.len().min(data.len());
        buf[..n].copy_from_slice(&data[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A source read on a thread of its own, a megabyte at a time.
pub type ReadAhead = Chunks<Vec<u8>>;

impl ReadAhead {
    /// Starts reading `inner` on a thread of its own. If the `ReadAhead` is
    /// dropped early, the thread stops at its next chunk.
    pub fn spawn(inner: impl Read + Send + 'static) -> ReadAhead {
        ReadAhead::with_depth(inner, IN_FLIGHT, "read-ahead")
    }

    /// As `spawn`, with up to `chunks` megabytes read ahead (a stream
    /// started before it is needed gets that far while the one before it
    /// is read), on a thread called `name`.
    pub fn with_depth(
        mut inner: impl Read + Send + 'static,
        chunks: usize,
        name: &str,
    ) -> ReadAhead {
        let chunks = chunks.max(1);
        let (tx, rx) = mpsc::sync_channel(chunks);
        let (spent, recycled) = mpsc::sync_channel::<Vec<u8>>(chunks + 1);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
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
                let end = filled == 0;
                let failed = result.is_err();
                let sent = match result {
                    Ok(()) => tx.send(Ok((buf, filled))),
                    Err(e) => tx.send(Err(e)),
                };
                if end || failed || sent.is_err() {
                    return;
                }
            })
            .expect("spawning a read-ahead thread");
        Chunks::new(vec![(rx, spent)])
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
        ReadAhead::spawn(io::Cursor::new(data.clone()))
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
        let mut r = ReadAhead::spawn(Failing(10));
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.to_string(), "digest mismatch");
    }
}
