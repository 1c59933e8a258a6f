//! The manifest: what a snapshot holds, written last into it as `manifest.json`.
//!
//! ```json
//! {"format":1,"tool":"snapshot 0.1.0","created_at":"2026-11-26T23:30:00.123Z","host":"web1",
//!  "deploy_dir":"/srv/app",
//!  "files":[{"path":"docker-compose.yml","size":912,"sha256":"…","mode":"0644","uid":0,"gid":0}],
//!  "containers":[{"service":"backend","name":"backend","id":"…",
//!                 "image":{"id":"sha256:…","reference":"registry/app:v1","tags":[…],"repo_digests":[…]},
//!                 "inspect":{…the whole `docker inspect`…}}],
//!  "checksum":"sha256:…"}
//! ```
//!
//! `checksum` is the SHA-256 of the manifest's JSON without that key (serialized compactly, keys
//! in their written order), so a truncated or edited manifest is caught before anything trusts
//! it. Readers refuse a `format` newer than [`FORMAT`]; fields may be added within a format.
//! The manifest holds the containers' environment (and so `.env` values): it is written 0600
//! inside a 0700 directory and never printed.

use std::path::{Component, Path, PathBuf};

use bollard::models::ContainerInspectResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The manifest format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// The manifest's file name inside a snapshot directory.
pub const MANIFEST: &str = "manifest.json";
/// Where the copies of the files live inside a snapshot directory.
pub const FILES: &str = "files";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The tool and version that wrote it.
    pub tool: String,
    /// When it was taken (RFC 3339, UTC). The snapshot's id is its directory name.
    pub created_at: String,
    pub host: String,
    /// The deploy directory the file paths are relative to (absolute).
    pub deploy_dir: PathBuf,
    pub files: Vec<FileEntry>,
    pub containers: Vec<ContainerEntry>,
    /// Services named at snapshot time that had no container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// One backed-up file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Relative to the deploy directory, `/`-separated, never leaving it.
    pub path: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Permission bits in octal, as `ls -l` shows them: `"0644"`.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
}

impl FileEntry {
    /// The permission bits (`mode` parsed); `None` when it is not octal.
    pub fn mode_bits(&self) -> Option<u32> {
        u32::from_str_radix(&self.mode, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
    }
}

/// One service's container as it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerEntry {
    pub service: String,
    /// The container's name, without Docker's leading `/`.
    pub name: String,
    pub id: String,
    pub image: ImageEntry,
    /// The whole `docker inspect` of the container: what `restore` recreates it from.
    pub inspect: ContainerInspectResponse,
}

/// The image a container ran: enough to find it again, or pull it back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ImageEntry {
    /// `sha256:…`: what the container ran, exactly.
    pub id: String,
    /// The reference the container was created with (`Config.Image`).
    pub reference: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `repo@sha256:…`: pullable by digest, which gives back the same image id.
    #[serde(default)]
    pub repo_digests: Vec<String>,
}

impl Manifest {
    /// The manifest as written: compact JSON with `checksum` last.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let Value::Object(mut map) =
            serde_json::to_value(self).map_err(|e| format!("cannot serialize: {e}"))?
        else {
            return Err("the manifest is not an object".into());
        };
        let body = serde_json::to_string(&map).map_err(|e| e.to_string())?;
        map.insert("checksum".into(), Value::String(checksum(body.as_bytes())));
        let mut bytes = serde_json::to_vec(&map).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parses and checks a manifest: its checksum, its format, and every file path.
    /// The error says what is wrong in a few words.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("{MANIFEST} is not JSON (truncated?): {e}"))?;
        let Value::Object(mut map) = value else {
            return Err(format!("{MANIFEST} is not a JSON object"));
        };
        let Some(Value::String(stored)) = map.remove("checksum") else {
            return Err(format!("{MANIFEST} has no checksum"));
        };
        let body = serde_json::to_string(&map).map_err(|e| e.to_string())?;
        if checksum(body.as_bytes()) != stored {
            return Err(format!(
                "{MANIFEST} does not match its checksum (edited or damaged)"
            ));
        }
        match map.get("format").and_then(Value::as_u64) {
            Some(f) if f <= u64::from(FORMAT) => {}
            Some(f) => {
                return Err(format!(
                    "{MANIFEST} has format {f}, newer than this tool reads ({FORMAT}); upgrade"
                ))
            }
            None => return Err(format!("{MANIFEST} has no format")),
        }
        let manifest: Manifest = serde_json::from_value(Value::Object(map))
            .map_err(|e| format!("{MANIFEST} is not a snapshot manifest: {e}"))?;
        for file in &manifest.files {
            safe_relative(&file.path)?;
            if file.mode_bits().is_none() {
                return Err(format!("{}: mode {:?} is not octal", file.path, file.mode));
            }
        }
        Ok(manifest)
    }

    /// Every image id the snapshot's containers ran.
    pub fn image_ids(&self) -> impl Iterator<Item = &str> {
        self.containers.iter().map(|c| c.image.id.as_str())
    }
}

/// `sha256:<hex>` of bytes.
fn checksum(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Checks that a manifest path stays inside the directory it is relative to: relative, only
/// plain components (no `..`, no `.`, no root), not empty. Returns it as a path.
pub fn safe_relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let plain = !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(p.to_path_buf())
    } else {
        Err(format!(
            "{path:?} would leave the deploy directory (only plain relative paths are allowed)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            tool: "snapshot test".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            host: "h".into(),
            deploy_dir: "/srv/app".into(),
            files: vec![FileEntry {
                path: ".env.production".into(),
                size: 3,
                sha256: "ab".into(),
                mode: "0600".into(),
                uid: 0,
                gid: 0,
            }],
            containers: vec![],
            missing: vec![],
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let bytes = sample().to_bytes().unwrap();
        let back = Manifest::parse(&bytes).unwrap();
        assert_eq!(back.files, sample().files);
        let text = String::from_utf8(bytes.clone()).unwrap();
        let edited = text.replace("\"size\":3", "\"size\":4");
        assert!(Manifest::parse(edited.as_bytes())
            .unwrap_err()
            .contains("checksum"));
        assert!(Manifest::parse(&bytes[..bytes.len() / 2])
            .unwrap_err()
            .contains("truncated"));
    }

    #[test]
    fn paths_must_stay_inside() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "",
            "./a",
            "a/./b",
            "a//b",
            "a/",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
        for good in [
            "docker-compose.yml",
            ".env.production",
            "nginx/conf.d/app.conf",
        ] {
            assert!(safe_relative(good).is_ok(), "{good}");
        }
    }
}
