//! The bill's uncompressed bytes, with a ceiling.
//!
//! WeChat serves the bill plain or gzip-compressed. The download is capped on compressed bytes
//! (`reconcile.max_bill_bytes`), but gzip turns 1 MiB into 1 GiB of zeros: without a ceiling
//! on what comes *out* of the decompressor, a hostile or broken file makes the hash pass and
//! the reader chew for hours. Nothing is ever written uncompressed (both passes stream), so the
//! ceiling bounds time, not disk; memory is bounded by [`super::MAX_LINE_BYTES`] per line.

use std::io::{self, BufRead, BufReader, Read};

use flate2::read::GzDecoder;

/// The two bytes every gzip member starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Read buffer around the decompressor: large reads keep the inflater fed.
const BUF: usize = 256 * 1024;

/// The bill's text: `input` as is, or gunzipped when it starts with the gzip magic; either
/// way a read fails with [`io::ErrorKind::InvalidData`] once more than `max_plain_bytes`
/// would come out.
pub fn plain_reader<R>(mut input: R, max_plain_bytes: u64) -> io::Result<Box<dyn BufRead + Send>>
where
    R: BufRead + Send + 'static,
{
    let gzip = input.fill_buf()?.starts_with(&GZIP_MAGIC);
    Ok(if gzip {
        Box::new(BufReader::with_capacity(BUF, Limited::new(GzDecoder::new(input), max_plain_bytes)))
    } else {
        Box::new(BufReader::with_capacity(BUF, Limited::new(input, max_plain_bytes)))
    })
}

/// A reader that refuses to yield more than `limit` bytes: one byte past it is an error, not
/// a silent truncation (a cut-off bill would otherwise look like a short day).
#[derive(Debug)]
pub struct Limited<R> {
    inner: R,
    limit: u64,
    remaining: u64,
}

impl<R: Read> Limited<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Self { inner, limit, remaining: limit }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // At the ceiling: only the end of the stream is acceptable now.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the bill is larger than {} bytes uncompressed", self.limit),
                )),
            };
        }
        let room = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..room])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn read_all(reader: &mut dyn BufRead) -> io::Result<u64> {
        io::copy(reader, &mut io::sink())
    }

    fn gzip(chunks: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        for chunk in chunks {
            encoder.write_all(&chunk).expect("compress");
        }
        encoder.finish().expect("finish")
    }

    #[test]
    fn exactly_the_limit_passes_and_one_byte_more_fails() {
        let data = vec![b'x'; 1000];
        assert_eq!(
            read_all(&mut *plain_reader(io::Cursor::new(data.clone()), 1000).expect("open")).expect("read"),
            1000
        );
        let err = read_all(&mut *plain_reader(io::Cursor::new(data.clone()), 999).expect("open")).expect_err("over");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let gz = gzip(std::iter::once(data));
        assert_eq!(read_all(&mut *plain_reader(io::Cursor::new(gz.clone()), 1000).expect("open")).expect("read"), 1000);
        assert!(read_all(&mut *plain_reader(io::Cursor::new(gz), 999).expect("open")).is_err());
    }

    /// A real bomb: 1 GiB of zeros is about 1 MiB of gzip. With a 16 MiB ceiling the reader
    /// stops after 16 MiB of output instead of inflating the whole gibibyte.
    #[test]
    fn a_gzip_bomb_stops_at_the_ceiling() {
        const MIB: usize = 1 << 20;
        let bomb = gzip((0..1024).map(|_| vec![0u8; MIB]));
        assert!(bomb.len() < 2 * MIB, "the bomb is small: {} bytes", bomb.len());
        let started = std::time::Instant::now();
        let mut reader = plain_reader(io::Cursor::new(bomb), 16 * MIB as u64).expect("open");
        let err = read_all(&mut *reader).expect_err("the ceiling stops the bomb");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("uncompressed"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "stopped early: {:?}", started.elapsed());
    }
}
