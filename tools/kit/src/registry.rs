//! Registry credentials as the docker CLI finds them, for pulls through the API (bollard does
//! not read the docker config): `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`,
//! with its `auths`, `credsStore` and `credHelpers`. A secret found is registered at once.

use bollard::auth::DockerCredentials;
use docker_credential::{CredentialRetrievalError as E, DockerCredential};

use crate::image::Reference;

/// The credentials stored for the registry of `reference`; `None` when there are none (pull
/// anonymously) or they cannot be read (said on stderr, without the helper's output, which may
/// hold secrets).
pub fn from_docker_config(reference: &Reference) -> Option<DockerCredentials> {
    let key = reference.auth_key();
    let registry = &reference.registry;
    let found = match docker_credential::get_credential(key) {
        Ok(found) => found,
        Err(E::ConfigNotFound | E::ConfigReadError | E::NoCredentialConfigured) => {
            crate::log::debug(&format!("no credentials for {registry}: anonymous"));
            return None;
        }
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            crate::log::warn(&format!(
                "cannot read the credentials for {registry} from the docker config ({first}); \
                 trying anonymously"
            ));
            return None;
        }
    };
    let mut credentials = DockerCredentials {
        serveraddress: Some(key.to_string()),
        ..Default::default()
    };
    match found {
        DockerCredential::UsernamePassword(user, password) => {
            crate::log::secret(&password);
            credentials.username = Some(user);
            credentials.password = Some(password);
        }
        DockerCredential::IdentityToken(token) => {
            crate::log::secret(&token);
            credentials.identitytoken = Some(token);
        }
    }
    Some(credentials)
}
