//! A deploy directory as a user has one (docker-compose.yml, .env.production with a secret),
//! shared by the snapshot and restore tests (restore includes it with `#[path]`).
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use testkit::{docker, tool, unique, Cleanup, Out, Value};

/// A value of .env.production that must never be printed.
pub const SECRET: &str = "hunter2-Sentinel-7f3e";

pub const COMPOSE: &str = "services:\n  backend:\n    image: dkt/app:v1\n";

pub struct Deploy {
    pub dir: PathBuf,
    pub backups: PathBuf,
    pub cleanup: Cleanup,
}

impl Deploy {
    /// docker-compose.yml (0644) and .env.production (0600, holding [`SECRET`]).
    pub fn new() -> Deploy {
        let mut cleanup = Cleanup::new();
        let dir = std::env::temp_dir().join(unique("deploy"));
        std::fs::create_dir_all(&dir).unwrap();
        cleanup.dir(&dir);
        let d = Deploy {
            backups: dir.join("backups"),
            dir,
            cleanup,
        };
        d.write("docker-compose.yml", COMPOSE.as_bytes(), 0o644);
        d.write(
            ".env.production",
            format!("DATABASE_URL=postgres://app:{SECRET}@db/app\nAPI_TOKEN=\"{SECRET}\"\n")
                .as_bytes(),
            0o600,
        );
        d
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, content: &[u8], mode: u32) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap()
    }

    pub fn mode(&self, rel: &str) -> u32 {
        mode_of(&self.path(rel))
    }

    /// Every file of the deploy directory (outside backups/) with its content and mode.
    pub fn state(&self) -> Vec<(String, Vec<u8>, u32)> {
        let mut out = Vec::new();
        walk(&self.dir, &self.dir, &self.backups, &mut out);
        out.sort();
        out
    }

    /// `snapshot --dir DIR <args>` with a fresh record.
    pub fn snapshot(&self, args: &[&str]) -> Out {
        let out = tool("snapshot")
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .run();
        no_secret(&out);
        out
    }

    /// `restore --dir DIR <args>` with a fresh record.
    pub fn restore(&self, args: &[&str]) -> Out {
        let out = tool("restore").arg("--dir").arg(&self.dir).args(args).run();
        no_secret(&out);
        out
    }

    /// `restore --dir DIR <args>` reading `record` on stdin.
    pub fn restore_piped(&self, record: &str) -> Out {
        let out = tool("restore")
            .arg("--dir")
            .arg(&self.dir)
            .stdin(record)
            .run();
        no_secret(&out);
        out
    }

    /// The ids `snapshot --list` offers, newest first.
    pub fn listed(&self) -> Vec<String> {
        let out = self.snapshot(&["--list"]);
        out.code(0).one_record();
        out.record["snapshot"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The snapshot directories on disk (anything but the lock file), sorted.
    pub fn on_disk(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.backups)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".snapshot.lock")
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn walk(root: &Path, dir: &Path, skip: &Path, out: &mut Vec<(String, Vec<u8>, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path == skip {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, skip, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read(&path).unwrap(), mode_of(&path)));
        }
    }
}

pub fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The secret never shows on stdout (the record) or stderr.
pub fn no_secret(out: &Out) {
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "{} printed a secret:\n{}\n{}",
        out.label,
        out.stdout,
        out.stderr
    );
}

/// Checks a snapshot directory without the tool's own code: the manifest parses, and every
/// file it lists is there with its size and SHA-256. Returns the listed paths.
pub fn verify_independently(snapshot: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(snapshot.join("manifest.json"))
        .map_err(|e| format!("manifest: {e}"))?;
    let manifest: Value = serde_json::from_str(&text).map_err(|e| format!("manifest: {e}"))?;
    let mut paths = Vec::new();
    for f in manifest["files"].as_array().ok_or("no files")? {
        let rel = f["path"].as_str().ok_or("no path")?;
        let mut file = std::fs::File::open(snapshot.join("files").join(rel))
            .map_err(|e| format!("{rel}: {e}"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("{rel}: {e}"))?;
        let sum: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if Some(sum.as_str()) != f["sha256"].as_str()
            || Some(bytes.len() as u64) != f["size"].as_u64()
        {
            return Err(format!("{rel}: content does not match the manifest"));
        }
        paths.push(rel.to_string());
    }
    Ok(paths)
}

/// Runs the fixture app as a service container on `net`; returns its name.
pub fn run_app(cleanup: &mut Cleanup, net: &str, image: &str, extra: &[&str]) -> String {
    let name = cleanup.container(&unique("svc"));
    run_named(&name, net, image, extra);
    name
}

/// `docker run -d --name NAME` on `net`, labelled as a test's, with a secret in its env.
pub fn run_named(name: &str, net: &str, image: &str, extra: &[&str]) {
    let mut args = vec!["-e", "APP_SECRET_SETTING=hunter2-Sentinel-7f3e"];
    args.extend_from_slice(extra);
    args.push(image);
    testkit::run_container(name, net, &args);
}

/// The image id a container runs.
pub fn image_of(container: &str) -> String {
    docker(&["inspect", "-f", "{{.Image}}", container])
}
