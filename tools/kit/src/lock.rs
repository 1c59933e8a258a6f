//! Taking a `flock(2)`, waiting while another process holds it. The kernel releases a flock
//! when its holder dies, however it dies, so a lock is never stale.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// What to do when the lock is found held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    Wait,
    GiveUp,
}

/// Opens `path` (creating it) and takes its flock, exclusive or shared, polling every `poll`
/// while another process holds it. Each time it is found held, `busy` is given the open file
/// (to read who holds it) and whether `wait` is spent, and decides. `None`: given up.
pub fn take(
    path: &Path,
    exclusive: bool,
    wait: Duration,
    poll: Duration,
    mut busy: impl FnMut(&mut File, bool) -> Busy,
) -> std::io::Result<Option<Flock<File>>> {
    let deadline = Instant::now() + wait;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match Flock::lock(file, arg) {
            Ok(held) => return Ok(Some(held)),
            Err((mut file, Errno::EWOULDBLOCK)) => {
                if busy(&mut file, Instant::now() >= deadline) == Busy::GiveUp {
                    return Ok(None);
                }
                std::thread::sleep(poll);
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

/// [`take`] that waits until `wait` is spent, then gives up.
pub fn take_within(
    path: &Path,
    exclusive: bool,
    wait: Duration,
) -> std::io::Result<Option<Flock<File>>> {
    take(
        path,
        exclusive,
        wait,
        Duration::from_millis(50),
        |_, spent| {
            if spent {
                Busy::GiveUp
            } else {
                Busy::Wait
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_file() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kit-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{:?}.lock", std::thread::current().id()))
    }

    #[test]
    fn a_held_lock_is_waited_for_and_taken_when_released() {
        let path = lock_file();
        let held = take_within(&path, true, Duration::ZERO).unwrap().unwrap();
        // flock is per open file: a second open in this process is another holder.
        assert!(take_within(&path, true, Duration::ZERO).unwrap().is_none());
        assert!(take_within(&path, false, Duration::from_millis(120))
            .unwrap()
            .is_none());
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            drop(held);
        });
        let started = Instant::now();
        let mut asked = 0;
        let got = take(
            &path,
            true,
            Duration::from_secs(10),
            Duration::from_millis(20),
            |_, spent| {
                asked += 1;
                assert!(!spent);
                Busy::Wait
            },
        )
        .unwrap();
        release.join().unwrap();
        assert!(got.is_some());
        assert!(asked >= 2, "busy was asked {asked} times");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn shared_holders_share_and_exclude_an_exclusive_one() {
        let path = lock_file();
        let a = take_within(&path, false, Duration::ZERO).unwrap();
        let b = take_within(&path, false, Duration::ZERO).unwrap();
        assert!(a.is_some() && b.is_some());
        let mut gave_up = false;
        let c = take(&path, true, Duration::ZERO, Duration::ZERO, |_, spent| {
            gave_up = spent;
            Busy::GiveUp
        })
        .unwrap();
        assert!(c.is_none() && gave_up);
    }
}
