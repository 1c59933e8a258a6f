//! What an interrupted or killed swap left behind, finished or removed before the next one:
//! a `<name>-next-…` container (adopted when it is the one serving, removed when half-made)
//! and the upstream file's temp file.

use kit::docker::Engine;
use kit::{log, Error, Result};

use crate::containers;
use crate::nginx;
use crate::request::{Request, Strategy};

/// What to do with a `<name>-next-…` container an interrupted swap left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Leftover {
    /// It serves and was never renamed (killed between the switch and the rename): it is the
    /// live one.
    Adopt,
    /// The upstream points at it while the live container also runs: a person must choose.
    Conflict,
    /// Half-made: remove it.
    Remove,
}

/// The decision for one leftover: `live` the stable name exists, `running` the leftover runs,
/// `serving` the upstream points at it, `upstream_known` there is an upstream that names
/// servers at all (alias and recreate have none).
pub(crate) fn leftover(live: bool, running: bool, serving: bool, upstream_known: bool) -> Leftover {
    if !live && running && (serving || !upstream_known) {
        Leftover::Adopt
    } else if serving {
        Leftover::Conflict
    } else {
        Leftover::Remove
    }
}

/// Finishes or removes what an earlier, interrupted or killed swap left behind.
pub(crate) fn reconcile(engine: &Engine, req: &Request) -> Result<()> {
    let name = &req.container;
    if let Strategy::Nginx(n) = &req.strategy {
        let tmp = nginx::temp_path(&n.upstream_file);
        if tmp.exists() {
            log::info(&format!(
                "removing {} left by an interrupted swap",
                tmp.display()
            ));
            let _ = std::fs::remove_file(&tmp);
        }
    }
    let next = containers::list(
        engine,
        &format!("^/{}-next-", regex::escape(name)),
        "preflight",
    )?;
    if next.is_empty() {
        return Ok(());
    }
    let live = engine.inspect(name)?.is_some();
    let referenced = upstream_ips(req);
    for c in next {
        let ip = engine
            .inspect(&c.id)?
            .and_then(|i| containers::ip_on(&i, &[]));
        let serving = ip.is_some_and(|ip| referenced.contains(&ip));
        match leftover(live, c.running, serving, !referenced.is_empty()) {
            Leftover::Adopt => {
                log::warn(&format!(
                    "{} serves but was never renamed (an interrupted swap); naming it {name}",
                    c.name
                ));
                containers::rename(engine, &c.id, name, "preflight")?;
            }
            Leftover::Conflict => {
                return Err(Error::step(
                    "preflight",
                    format!(
                        "the upstream file points at {}, left by an interrupted swap, while \
                         {name} also runs; point the file at the one that should serve and \
                         remove the other",
                        c.name
                    ),
                ))
            }
            Leftover::Remove => {
                log::warn(&format!(
                    "removing {}, left half-made by an interrupted swap",
                    c.name
                ));
                containers::remove(engine, &c.id);
            }
        }
    }
    Ok(())
}

/// IPs the nginx upstream file points at now (none for the other strategies).
fn upstream_ips(req: &Request) -> Vec<String> {
    let Strategy::Nginx(n) = &req.strategy else {
        return Vec::new();
    };
    let upstream = n.upstream.as_deref().unwrap_or(&req.service);
    std::fs::read_to_string(&n.upstream_file)
        .ok()
        .and_then(|t| nginx::servers(&t, upstream))
        .unwrap_or_default()
        .iter()
        .map(|s| {
            s.rsplit_once(':')
                .map_or(s.as_str(), |(ip, _)| ip)
                .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_an_interrupted_swap() {
        use Leftover::*;
        // Killed between the switch and the rename: the upstream points at it, nothing
        // else is live.
        assert_eq!(leftover(false, true, true, true), Adopt);
        // alias/recreate (no upstream to ask): a running leftover with no live one serves.
        assert_eq!(leftover(false, true, false, false), Adopt);
        // nginx knows better: it does not serve.
        assert_eq!(leftover(false, true, false, true), Remove);
        // Both run and the upstream points at the leftover: a person must choose.
        assert_eq!(leftover(true, true, true, true), Conflict);
        // Killed before the switch.
        assert_eq!(leftover(true, true, false, true), Remove);
        assert_eq!(leftover(true, false, false, false), Remove);
        assert_eq!(
            leftover(false, false, false, false),
            Remove,
            "never started"
        );
    }
}
