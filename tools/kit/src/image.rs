//! Image references (`registry.example.com:5000/shop/api:v1`) as Docker reads them: which part
//! is the registry, the repository and the tag, and the key credentials are stored under.

/// A parsed `[registry/]path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry host (`127.0.0.1:5000`); `docker.io` when the reference names none.
    pub registry: String,
    /// The repository as written, registry included: what `docker push` is given.
    pub repository: String,
    /// The path inside the registry (`shop/api`; `library/nginx` on Docker Hub).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Docker Hub's host and the key its credentials are stored under in `config.json`.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

impl Reference {
    /// Parses and checks a reference, with Docker's rules: lowercase path components, a tag
    /// of at most 128 word characters, dots and dashes.
    pub fn parse(text: &str) -> Result<Reference, String> {
        let bad = |why: &str| Err(format!("'{text}' is not an image reference: {why}"));
        if text.is_empty() {
            return bad("it is empty");
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.to_string())),
            None => (text, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !tag.starts_with(['.', '-']);
            if !ok {
                return bad(
                    "a tag is 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                );
            }
        }
        let (registry, path) = match repository.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), repository.to_string()),
        };
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for part in path.split('/') {
            let ok = !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                return bad("repository names are lowercase letters, digits and separators (._-) between '/'");
            }
        }
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            path,
            tag,
            digest,
        })
    }

    /// The reference with `:latest` when it names no tag or digest, as `docker` reads it.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".into());
        }
        self
    }

    /// The key the docker CLI stores this registry's credentials under in `config.json`.
    pub fn auth_key(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY
        } else {
            &self.registry
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_repository_and_tag() {
        let r = Reference::parse("127.0.0.1:5000/shop/api:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.path.as_str()),
            ("127.0.0.1:5000", "127.0.0.1:5000/shop/api", "shop/api")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let r = Reference::parse("nginx").unwrap().with_default_tag();
        assert_eq!(
            (r.registry.as_str(), r.path.as_str()),
            ("docker.io", "library/nginx")
        );
        assert_eq!(r.to_string(), "nginx:latest");
        assert_eq!(r.auth_key(), DOCKER_HUB_AUTH_KEY);
        let r = Reference::parse("localhost:5000/app").unwrap();
        assert_eq!((r.registry.as_str(), r.tag), ("localhost:5000", None));
    }

    #[test]
    fn bad_references_say_why() {
        assert!(Reference::parse("Shop/API:v1")
            .unwrap_err()
            .contains("lowercase"));
        assert!(Reference::parse("app:").unwrap_err().contains("tag"));
        assert!(Reference::parse("app:-x").is_err());
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("a//b").is_err());
    }
}
