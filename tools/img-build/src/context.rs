//! The build context, sent to the engine as a tar written while the directory is read.
//!
//! A thread walks the context (in the CLI's order: lexical, a directory before its contents)
//! and writes tar entries into a [`Chunks`] writer, which hands 256 KiB chunks to a bounded
//! channel; the HTTP request body reads from that channel. Memory therefore stays at a few
//! chunks however large the context is, and reading overlaps with the engine's unpacking.
//!
//! Entries are what the docker CLI sends: paths relative to the root, owner 0:0, permission
//! bits, mtime in seconds, symlinks as links, hard links once, `.dockerignore` applied.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::dockerignore::{Matcher, Parent};

/// The size of one chunk of the body.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the reading thread and the request: the bound on memory.
pub const IN_FLIGHT: usize = 8;

pub type Body = mpsc::Receiver<io::Result<Bytes>>;

/// A context ready to stream: its root, the ignore rules, and the Dockerfile when it lives
/// outside the root (then sent under a generated name, as the CLI does).
pub struct Context {
    pub root: PathBuf,
    pub matcher: Matcher,
    /// The Dockerfile's name inside the tar, as the engine must be told.
    pub dockerfile: String,
    /// A Dockerfile from outside the context: its tar name and content, plus the
    /// `.dockerignore` text to send in place of the context's own (it gains that name).
    pub outside: Option<Outside>,
}

pub struct Outside {
    pub name: String,
    pub content: Vec<u8>,
    pub dockerignore: Vec<u8>,
}

/// What was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub files: u64,
    pub bytes: u64,
}

impl Context {
    /// Starts the reading thread. The returned body ends with an error item if reading fails;
    /// the thread's result says what failed.
    pub fn stream(self) -> (Body, std::thread::JoinHandle<io::Result<Sent>>) {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let handle = std::thread::spawn(move || {
            let errors = tx.clone();
            let result = self.write(Chunks::new(tx));
            if let Err(e) = &result {
                // Abort the request body so the engine does not build half a context.
                let _ = errors.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        (rx, handle)
    }

    fn write(self, out: Chunks) -> io::Result<Sent> {
        let mut tar = tar::Builder::new(out);
        let mut walk = Walk {
            tar: &mut tar,
            links: HashMap::new(),
            sent: Sent::default(),
            replace_dockerignore: self.outside.as_ref().map(|o| o.dockerignore.as_slice()),
        };
        walk_dir(&self.root, &self.matcher, &mut |path, rel, meta| {
            walk.entry(path, rel, meta)
        })?;
        let mut sent = walk.sent;
        if let Some(outside) = &self.outside {
            if !walk_saw_dockerignore(&self.root, &self.matcher) {
                append_bytes(&mut tar, ".dockerignore", &outside.dockerignore)?;
            }
            append_bytes(&mut tar, &outside.name, &outside.content)?;
            sent.files += 1;
        }
        tar.into_inner()?.finish()?;
        Ok(sent)
    }
}

fn walk_dir(
    root: &Path,
    matcher: &Matcher,
    visit: &mut dyn FnMut(&Path, &str, &Metadata) -> io::Result<()>,
) -> io::Result<()> {
    walk(root, "", Some(matcher), None, false, visit)
}

/// Whether the walk sent the context's own `.dockerignore` (it is always kept when present).
fn walk_saw_dockerignore(root: &Path, matcher: &Matcher) -> bool {
    fs::symlink_metadata(root.join(".dockerignore")).is_ok() && !matcher.excludes(".dockerignore")
}

struct Walk<'a, W: Write> {
    tar: &'a mut tar::Builder<W>,
    /// (device, inode) of files with several links, to send later ones as hard links.
    links: HashMap<(u64, u64), String>,
    sent: Sent,
    replace_dockerignore: Option<&'a [u8]>,
}

/// Walks `dir` in the docker CLI's order (lexical, a directory before its contents), calling
/// `visit` with each entry `matcher` keeps (every entry without one). An excluded directory is
/// not even read unless an exception reopens it; `reopened` says whether such a directory is
/// visited itself (fsutil sends it, as its files' parent; the CLI's tar leaves it out). Shared
/// by the tar sent to the classic builder and the files BuildKit asks for
/// ([`crate::filesync`]).
pub fn walk(
    dir: &Path,
    rel: &str,
    matcher: Option<&Matcher>,
    parent: Option<&Parent>,
    reopened: bool,
    visit: &mut dyn FnMut(&Path, &str, &Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| context_error(e, "cannot list", dir))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| context_error(e, "cannot list", dir))?;
    entries.sort();
    for name in entries {
        let Some(name) = name.to_str() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: a file name is not UTF-8", dir.display()),
            ));
        };
        let path = dir.join(name);
        let rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let meta =
            fs::symlink_metadata(&path).map_err(|e| context_error(e, "cannot stat", &path))?;
        let (excluded, info) = match matcher {
            Some(m) => {
                let (excluded, info) = m.check(&rel, parent);
                (excluded, Some(info))
            }
            None => (false, None),
        };
        if excluded {
            if meta.is_dir() && matcher.is_some_and(|m| m.reopens(&rel)) {
                if reopened {
                    visit(&path, &rel, &meta)?;
                }
                walk(&path, &rel, matcher, info.as_ref(), reopened, visit)?;
            }
            continue;
        }
        visit(&path, &rel, &meta)?;
        if meta.is_dir() {
            walk(&path, &rel, matcher, info.as_ref(), reopened, visit)?;
        }
    }
    Ok(())
}

impl<W: Write> Walk<'_, W> {
    fn entry(&mut self, path: &Path, rel: &str, meta: &Metadata) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(meta.mtime().max(0) as u64);
        header.set_size(0);
        let ft = meta.file_type();
        let io_err = |e| context_error(e, "cannot send", path);
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            self.tar
                .append_data(&mut header, format!("{rel}/"), io::empty())
                .map_err(io_err)?;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(path).map_err(|e| context_error(e, "cannot read link", path))?;
            header.set_entry_type(tar::EntryType::Symlink);
            self.tar
                .append_link(&mut header, rel, target)
                .map_err(io_err)?;
        } else if ft.is_file() {
            if rel == ".dockerignore" {
                if let Some(text) = self.replace_dockerignore {
                    header.set_size(text.len() as u64);
                    header.set_entry_type(tar::EntryType::Regular);
                    self.tar
                        .append_data(&mut header, rel, text)
                        .map_err(io_err)?;
                    self.sent.files += 1;
                    return Ok(());
                }
            }
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    header.set_entry_type(tar::EntryType::Link);
                    let first = first.clone();
                    return self
                        .tar
                        .append_link(&mut header, rel, first)
                        .map_err(io_err);
                }
                self.links.insert(key, rel.to_string());
            }
            let file = File::open(path).map_err(|e| context_error(e, "cannot read", path))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let exact = Exact {
                inner: file.take(meta.len()),
                left: meta.len(),
                path,
            };
            self.tar
                .append_data(&mut header, rel, exact)
                .map_err(io_err)?;
            self.sent.files += 1;
            self.sent.bytes += meta.len();
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let rdev = meta.rdev();
            header.set_device_major(nix_major(rdev))?;
            header.set_device_minor(nix_minor(rdev))?;
            self.tar
                .append_data(&mut header, rel, io::empty())
                .map_err(io_err)?;
        }
        // Sockets cannot be archived; the CLI skips them too.
        Ok(())
    }
}

fn nix_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn nix_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o600);
    header.set_size(data.len() as u64);
    header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}

fn context_error(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Reads exactly the size announced in the tar header: a file that shrinks while it is sent
/// is an error, not a corrupt archive (one that grows is cut by `take`).
struct Exact<'a, R> {
    inner: R,
    left: u64,
    path: &'a Path,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being sent", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that hands fixed-size chunks to the request body, waiting while the engine is
/// behind (that wait is what bounds memory).
pub struct Chunks {
    buf: Vec<u8>,
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Chunks {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Chunks {
        Chunks {
            buf: Vec::with_capacity(CHUNK),
            tx,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the context",
            )
        })
    }

    fn finish(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ctx: Context) -> Vec<String> {
        let (mut rx, handle) = ctx.stream();
        let mut tar = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            tar.extend_from_slice(&chunk.unwrap());
        }
        handle.join().unwrap().unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn walks_in_order_and_applies_the_ignore_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        for f in ["b.txt", "a/x.log", "a/keep.log", "c/d/e.txt", "Dockerfile"] {
            let p = dir.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f).unwrap();
        }
        std::os::unix::fs::symlink("b.txt", dir.join("link")).unwrap();
        let matcher = Matcher::parse("a\n!a/keep.log\nc/d\n").unwrap();
        let ctx = Context {
            root: dir.clone(),
            matcher,
            dockerfile: "Dockerfile".into(),
            outside: None,
        };
        assert_eq!(
            names(ctx),
            ["Dockerfile", "a/keep.log", "b.txt", "c/", "link"]
        );
    }
}
