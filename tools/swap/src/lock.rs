//! The deploy lock: one per service, a file held with `flock(2)` for the whole swap.
//!
//! The kernel releases a flock when its holder dies, however it dies, so a lock is never stale
//! in the sense of blocking forever. The holder writes who it is (pid, host, time, image) into
//! the file and empties it when it releases the lock cleanly; a lock taken over a non-empty
//! file therefore means the last holder died mid-swap, which is said on stderr and recorded.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kit::lock::Busy;
use kit::{Error, Result};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

/// `$XDG_RUNTIME_DIR/deploykit`, else `/tmp/deploykit-locks`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("deploykit"),
        _ => PathBuf::from("/tmp/deploykit-locks"),
    }
}

/// Who holds (or held) a lock, as written into the lock file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub since: String,
    pub image: String,
    #[serde(default)]
    pub tool: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {} (deploying {})",
            self.pid, self.host, self.since, self.image
        )
    }
}

/// A held lock; released (and emptied) on drop.
pub struct Lock {
    file: Option<Flock<File>>,
    pub path: PathBuf,
    /// The holder whose lock this one took over after it died mid-swap.
    pub took_over: Option<Holder>,
}

impl Lock {
    /// Takes the service's lock, waiting up to `wait` (polling) while another swap holds it.
    pub fn take(
        dir: &Path,
        service: &str,
        image: &str,
        wait: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Lock> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(
                "lock",
                format!("cannot create the lock directory {}", dir.display()),
                e,
            )
        })?;
        let path = dir.join(format!("{}.lock", sanitize(service)));
        let mut holder = String::new();
        let mut said_waiting = false;
        let busy = |file: &mut File, spent: bool| {
            holder = read_holder(file)
                .map(|h| h.to_string())
                .unwrap_or_else(|| "another swap (holder not written yet)".into());
            if spent || stop() {
                return Busy::GiveUp;
            }
            if !said_waiting {
                kit::log::info(&format!(
                    "waiting up to {} for the deploy lock held by {holder}",
                    kit::human(wait)
                ));
                said_waiting = true;
            }
            Busy::Wait
        };
        let held = kit::lock::take(&path, true, wait, Duration::from_millis(100), busy)
            .map_err(|e| Error::io("lock", format!("cannot lock {}", path.display()), e))?;
        let Some(mut held) = held else {
            let hint = if wait.is_zero() {
                "; wait for it with --lock-wait 5m"
            } else {
                ""
            };
            return Err(Error::step(
                "lock",
                format!(
                    "{service} is being deployed by {holder}; lock file {}{hint}",
                    path.display()
                ),
            ));
        };
        let took_over = read_holder(&mut held);
        write_holder(&mut held, service, image)
            .map_err(|e| Error::io("lock", format!("write {}", path.display()), e))?;
        if let Some(h) = &took_over {
            kit::log::warn(&format!(
                "took over the deploy lock of {h}: that swap ended without releasing it \
                 (killed?); what it left half-made is cleaned up now"
            ));
        }
        Ok(Lock {
            file: Some(held),
            path,
            took_over,
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(held) = self.file.take() {
            // Emptied before the flock goes, so the next holder knows this one ended cleanly.
            let _ = held.set_len(0);
            let _ = held.sync_data();
            drop(held);
        }
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

fn write_holder(file: &mut File, _service: &str, image: &str) -> std::io::Result<()> {
    let holder = Holder {
        pid: std::process::id(),
        host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "?".into()),
        since: kit::record::now_rfc3339(),
        image: image.to_string(),
        tool: kit::log::tool().to_string(),
    };
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    let line = serde_json::to_string(&holder).unwrap_or_default();
    file.write_all(line.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_data()
}

/// A service name as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
fn sanitize(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
