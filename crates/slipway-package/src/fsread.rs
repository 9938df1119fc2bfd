//! Opening files this crate reads from untrusted places (artifacts, OCI layouts): only
//! regular files, opened without blocking. A FIFO opened for reading blocks until a writer
//! appears and a device can yield bytes forever, so the file is opened with `O_NONBLOCK`
//! (which a regular file ignores) and its type is checked on the open handle (`fstat`,
//! so a file swapped between a check and the open cannot slip through). Reads of whole
//! documents are capped.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// What kind of file, in words, for errors.
fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file; returns it and its length.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("read", path, e))?;
    if !meta.is_file() {
        return Err(Error::Inspect {
            path: path.to_owned(),
            reason: format!(
                "it is {}, not a regular file; refusing to read it",
                kind(meta.file_type())
            ),
        });
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `max` bytes (`what` names it in errors).
pub(crate) fn read_regular(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > max {
        return Err(Error::Inspect {
            path: path.to_owned(),
            reason: format!("{what} is {len} bytes, more than the {max}-byte limit"),
        });
    }
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("read", path, e))?;
    if data.len() as u64 > max {
        return Err(Error::Inspect {
            path: path.to_owned(),
            reason: format!("{what} grew past the {max}-byte limit while being read"),
        });
    }
    Ok(data)
}
