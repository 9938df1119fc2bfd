//! Reading files named by input (a spec, an archive, a layout, a command-line path) so
//! that no such path can hang or exhaust slipway: only regular files are read — a FIFO
//! would block the reader until some writer appears, `/dev/zero` or a terminal never
//! ends — and whole-file reads are bounded.
//!
//! The file is opened with `O_NONBLOCK` (opening a FIFO for reading otherwise waits for a
//! writer) and checked with `fstat` on the open descriptor, so a path swapped for a FIFO
//! between a check and the open is still refused. `O_NONBLOCK` does nothing to reads of a
//! regular file.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// What kind of file `meta` describes, for a refusal.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO (named pipe)"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Open `path` for reading if it is a regular file (after following symlinks); an
/// `InvalidInput` error naming its kind otherwise.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is a {}, not a regular file", kind(&meta)),
        ));
    }
    Ok(f)
}

/// The whole of the regular file `path` if it holds at most `max` bytes; an
/// `InvalidData` error saying so when it holds more (read no further than `max + 1`).
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let mut data = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than {max} bytes"),
        ));
    }
    Ok(data)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_string(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_and_a_large_file_is_refused_past_its_bound() {
        let dir = std::env::temp_dir().join(format!("stdx-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        assert!(
            crate::command("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let e = read_regular(&fifo, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = open_regular(&dir).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let big = dir.join("big");
        std::fs::write(&big, [b'x'; 11]).unwrap();
        assert_eq!(read_regular(&big, 11).unwrap().len(), 11);
        let e = read_regular(&big, 10).unwrap_err();
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
