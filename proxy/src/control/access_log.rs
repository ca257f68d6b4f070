//! The JSON access log: one line per request, buffered per core and written once a second or
//! every 64 KiB, one write each with `O_APPEND`, so cores never interleave inside a line.

use std::io;
use std::io::Write;

/// A core's buffered JSON access log: lines are written once a second or every 64 KiB, one
/// write each, with `O_APPEND`, so cores never interleave inside a line.
pub(crate) struct AccessLog {
    pub(crate) buf: Vec<u8>,
    out: Option<std::fs::File>,
    pub(crate) seq: u64,
}

impl AccessLog {
    pub(crate) fn open(target: &str) -> io::Result<AccessLog> {
        let out = if target == "-" {
            None
        } else {
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        Ok(AccessLog {
            buf: Vec::with_capacity(64 * 1024),
            out,
            seq: 0,
        })
    }

    pub(crate) fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let r = match &mut self.out {
            Some(f) => f.write_all(&self.buf),
            None => io::stderr().write_all(&self.buf),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "access log write failed");
        }
        self.buf.clear();
    }
}
