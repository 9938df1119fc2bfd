//! Streaming SHA-256 digests of files and their verification against an expected value.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Hashes everything read through it, so a file is hashed while it is being copied
/// rather than read twice.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the lowercase hex digest and the number of bytes read.
    pub(crate) fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Returns the lowercase hex SHA-256 of everything `reader` yields and its length.
pub(crate) fn sha256_reader(reader: impl Read) -> io::Result<(String, u64)> {
    let mut hashing = HashingReader::new(reader);
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hashing.finish())
}

/// Returns the lowercase hex SHA-256 of a byte slice.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Returns the lowercase hex SHA-256 of the file at `path`, read in a stream so large
/// artifacts never sit in memory.
///
/// Only regular files are read: a FIFO or device is refused at once instead of blocking
/// or streaming forever.
pub fn sha256_file(path: &Path) -> Result<String> {
    let (file, _) = crate::fsread::open_regular(path)?;
    let (digest, _) = sha256_reader(file).map_err(|e| Error::io("read", path, e))?;
    Ok(digest)
}

/// Normalises a digest as written by people and tools (`sha256:` prefix, upper case) to
/// 64 lowercase hex characters.
pub fn parse_sha256(value: &str) -> Result<String> {
    let trimmed = value.trim();
    let hex_part = trimmed.strip_prefix("sha256:").unwrap_or(trimmed);
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidDigest {
            value: value.to_owned(),
        });
    }
    Ok(hex_part.to_ascii_lowercase())
}

/// Checks that the file at `path` has the SHA-256 `expected`; the error carries both
/// digests so the caller can report and audit them.
pub fn verify_digest(path: &Path, expected_sha256: &str) -> Result<()> {
    let expected = parse_sha256(expected_sha256)?;
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(Error::DigestMismatch {
            path: path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(())
}
