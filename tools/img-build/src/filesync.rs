//! The context as BuildKit reads it: the session's file sync (`moby.filesync.v1.FileSync`,
//! fsutil's "diffcopy"), as the docker CLI serves it under BuildKit.
//!
//! The engine asks for a directory by name — `context`, or `dockerfile` (the Dockerfile's own
//! directory) — with the paths it wants (`followpaths`: the Dockerfile, `.dockerignore`) or the
//! patterns it leaves out (`exclude-patterns`: the `.dockerignore` it read first). We send one
//! `STAT` per entry in the walk's order, then an empty `STAT`; it asks for the content of the
//! files it does not have (`REQ` with the entry's number) and we send each in 32 KiB `DATA`
//! packets ending with an empty one; `FIN` ends it. So only what changed is read and sent, a
//! few packets are in flight at a time whatever the context's size, and `.dockerignore` is
//! applied here, by the same [`Matcher`] the classic builder's tar uses.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bollard::grpc::build::fsutil::types::packet::PacketType;
use bollard::grpc::build::fsutil::types::{Packet, Stat};
use bollard::grpc::build::moby::filesync::packet::file_sync_server::FileSync;
use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::context::{self, Sent};
use crate::dockerignore::Matcher;

/// fsutil's chunk size.
const CHUNK: usize = 32 * 1024;
/// Packets in flight towards the engine: the bound on memory.
const IN_FLIGHT: usize = 16;

/// The directories the engine may ask for.
pub struct Dirs {
    /// The context, and its `.dockerignore` as the CLI reads it.
    pub context: PathBuf,
    pub ignore: Matcher,
    /// The Dockerfile's directory (inside the context or not).
    pub dockerfile: PathBuf,
}

/// The file sync service, counting what it sent.
pub struct Provider {
    dirs: Arc<Dirs>,
    files: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Provider {
    pub fn new(dirs: Dirs) -> (Provider, Counter) {
        let (files, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counter = Counter {
            files: files.clone(),
            bytes: bytes.clone(),
        };
        (
            Provider {
                dirs: Arc::new(dirs),
                files,
                bytes,
            },
            counter,
        )
    }
}

/// What the file sync sent, read after the build.
#[derive(Clone)]
pub struct Counter {
    files: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Counter {
    pub fn sent(&self) -> Sent {
        Sent {
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

#[tonic::async_trait]
impl FileSync for Provider {
    type DiffCopyStream = PacketStream;
    type TarStreamStream = PacketStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<PacketStream>, Status> {
        let all = |key: &str| -> Vec<String> {
            request
                .metadata()
                .get_all(key)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect()
        };
        let dir_name = all("dir-name").into_iter().next().unwrap_or_default();
        let follow: Vec<String> = all("followpaths")
            .into_iter()
            .chain(all("include-patterns"))
            .collect();
        let excludes = !all("exclude-patterns").is_empty();
        let root = match dir_name.as_str() {
            "context" => self.dirs.context.clone(),
            "dockerfile" => self.dirs.dockerfile.clone(),
            other => {
                return Err(Status::permission_denied(format!(
                    "no access allowed to dir {other:?}"
                )))
            }
        };
        let (tx, rx) = mpsc::channel::<Result<Packet, Status>>(IN_FLIGHT);
        let ids: Arc<Mutex<HashMap<u32, PathBuf>>> = Arc::default();

        // The walk: one STAT per entry, then an empty one.
        let (walk_tx, walk_ids, dirs, files) = (
            tx.clone(),
            ids.clone(),
            self.dirs.clone(),
            self.files.clone(),
        );
        let use_ignore = excludes && dir_name == "context";
        std::thread::spawn(move || {
            let matcher = use_ignore.then_some(&dirs.ignore);
            if let Err(e) = send_stats(&root, matcher, &follow, &walk_tx, &walk_ids, &files) {
                let _ = walk_tx.blocking_send(Ok(Packet {
                    r#type: PacketType::PacketErr as i32,
                    data: e.to_string().into_bytes(),
                    ..Packet::default()
                }));
            }
        });

        // The engine's requests: each file's content, then FIN.
        let mut incoming = request.into_inner();
        let (want_tx, want_rx) = std::sync::mpsc::channel::<u32>();
        let (data_tx, bytes) = (tx.clone(), self.bytes.clone());
        std::thread::spawn(move || {
            for id in want_rx {
                let path = ids.lock().ok().and_then(|mut ids| ids.remove(&id));
                let sent = match path {
                    Some(path) => send_file(&path, id, &data_tx, &bytes),
                    None => Err(std::io::Error::other(format!("invalid file id {id}"))),
                };
                if let Err(e) = sent {
                    let _ = data_tx.blocking_send(Err(Status::internal(e.to_string())));
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(Some(p)) = incoming.message().await {
                match PacketType::try_from(p.r#type) {
                    Ok(PacketType::PacketReq) if want_tx.send(p.id).is_err() => break,
                    Ok(PacketType::PacketFin) => {
                        let _ = tx
                            .send(Ok(Packet {
                                r#type: PacketType::PacketFin as i32,
                                ..Packet::default()
                            }))
                            .await;
                        break;
                    }
                    Ok(PacketType::PacketErr) => {
                        kit::log::debug(&format!(
                            "the engine stopped reading the context: {}",
                            String::from_utf8_lossy(&p.data)
                        ));
                        break;
                    }
                    _ => {}
                }
            }
        });
        let mut rx = rx;
        Ok(Response::new(Box::pin(futures_util::stream::poll_fn(
            move |cx| rx.poll_recv(cx),
        ))))
    }

    async fn tar_stream(
        &self,
        _: Request<Streaming<Packet>>,
    ) -> Result<Response<PacketStream>, Status> {
        Err(Status::unimplemented("tarstream"))
    }
}

/// Sends the STAT of every entry (or of `follow` and their parents only), numbering the
/// regular files the engine may then ask for.
fn send_stats(
    root: &Path,
    matcher: Option<&Matcher>,
    follow: &[String],
    tx: &mpsc::Sender<Result<Packet, Status>>,
    ids: &Mutex<HashMap<u32, PathBuf>>,
    files: &AtomicU64,
) -> std::io::Result<()> {
    let mut id: u32 = 0;
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut one = |path: &Path, rel: &str, meta: &Metadata| -> std::io::Result<()> {
        let stat = stat(path, rel, meta, &mut links)?;
        if meta.file_type().is_file() {
            if let Ok(mut ids) = ids.lock() {
                ids.insert(id, path.to_path_buf());
            }
            files.fetch_add(1, Ordering::Relaxed);
        }
        id += 1;
        tx.blocking_send(Ok(Packet {
            r#type: PacketType::PacketStat as i32,
            stat: Some(stat),
            ..Packet::default()
        }))
        .map_err(|_| std::io::Error::other("the engine stopped reading the context"))
    };
    // `followpaths` and `include-patterns` (a COPY's sources) narrow what is sent to the paths
    // they match and what is under them; the directories above a sent entry are sent first,
    // as fsutil does, so the engine sees them in the walk's order.
    let include = if follow.is_empty() {
        None
    } else {
        Some(
            Matcher::parse(&follow.join("\n"))
                .map_err(|e| std::io::Error::other(format!("the engine's include pattern: {e}")))?,
        )
    };
    let mut above: Vec<(PathBuf, String, Metadata)> = Vec::new();
    context::walk(root, "", matcher, None, true, &mut |path, rel, meta| {
        let Some(include) = &include else {
            return one(path, rel, meta);
        };
        while above
            .last()
            .is_some_and(|(_, dir, _)| !rel.starts_with(&format!("{dir}/")))
        {
            above.pop();
        }
        if include.excludes(rel) {
            for (p, r, m) in above.drain(..) {
                one(&p, &r, &m)?;
            }
            one(path, rel, meta)
        } else {
            if meta.is_dir() {
                above.push((path.to_path_buf(), rel.to_string(), meta.clone()));
            }
            Ok(())
        }
    })?;
    tx.blocking_send(Ok(Packet {
        r#type: PacketType::PacketStat as i32,
        ..Packet::default()
    }))
    .map_err(|_| std::io::Error::other("the engine stopped reading the context"))
}

/// fsutil's Stat: Go's `os.FileMode` bits, owner 0:0 (as the CLI sends the context), mtime in
/// nanoseconds, a symlink's target, and a hard link's first path.
fn stat(
    path: &Path,
    rel: &str,
    meta: &Metadata,
    links: &mut HashMap<(u64, u64), String>,
) -> std::io::Result<Stat> {
    let ft = meta.file_type();
    let m = meta.mode();
    let mut mode = m & 0o777;
    if m & 0o4000 != 0 {
        mode |= 1 << 23; // setuid
    }
    if m & 0o2000 != 0 {
        mode |= 1 << 22; // setgid
    }
    if m & 0o1000 != 0 {
        mode |= 1 << 20; // sticky
    }
    let mut s = Stat {
        path: rel.to_string(),
        size: meta.len() as i64,
        mod_time: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ..Stat::default()
    };
    if ft.is_dir() {
        mode |= 1 << 31;
    } else if ft.is_symlink() {
        mode |= 1 << 27;
        s.linkname = fs::read_link(path)?.to_string_lossy().into_owned();
    } else if ft.is_fifo() {
        mode |= 1 << 25;
    } else if ft.is_socket() {
        mode |= 1 << 24;
    } else if ft.is_char_device() || ft.is_block_device() {
        mode |= 1 << 26;
        if ft.is_char_device() {
            mode |= 1 << 21;
        }
        let rdev = meta.rdev();
        s.devmajor = (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) as i64;
        s.devminor = (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as i64;
    } else if meta.nlink() > 1 {
        match links.get(&(meta.dev(), meta.ino())) {
            Some(first) => {
                s.linkname = first.clone();
                s.size = 0;
            }
            None => {
                links.insert((meta.dev(), meta.ino()), rel.to_string());
            }
        }
    }
    s.mode = mode;
    Ok(s)
}

fn send_file(
    path: &Path,
    id: u32,
    tx: &mpsc::Sender<Result<Packet, Status>>,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    let gone = || std::io::Error::other("the engine stopped reading the context");
    let mut file = File::open(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
    })?;
    loop {
        let mut buf = vec![0; CHUNK];
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        tx.blocking_send(Ok(Packet {
            r#type: PacketType::PacketData as i32,
            id,
            data: buf,
            ..Packet::default()
        }))
        .map_err(|_| gone())?;
    }
    tx.blocking_send(Ok(Packet {
        r#type: PacketType::PacketData as i32,
        id,
        ..Packet::default()
    }))
    .map_err(|_| gone())
}
