//! The store's connection to Redis: one server (`redis://`, through the crate's
//! `ConnectionManager`) or a Redis Cluster (`redis+cluster://`, through its async cluster
//! client). The store sends the same scripts either way; only the routing differs. Every key of
//! a swarm shares one hash tag, so on a Cluster every script runs on the one node that owns that
//! slot: the cluster client learns the slot map from any seed node, follows MOVED and ASK when a
//! slot moves, and refreshes the map when a replica is promoted.
//!
//! The URL forms (`--store`):
//!
//! * `redis://HOST:PORT[/DB]`, `redis+unix://...`: one server, as the `redis` crate reads them
//!   (`rediss://` is refused at start: the crate is built without TLS).
//! * `redis+cluster://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...]`: seed nodes of one Cluster
//!   (any of its nodes, masters or replicas; one is enough, more survive one being down). The
//!   crate has no URL for a Cluster: each seed becomes `redis://[USER[:PASSWORD]@]HOST:PORT`.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, ScriptInvocation, Value};
use std::time::Duration;

/// The scheme of a Cluster's seed list.
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster://";
/// Most seed nodes in one `redis+cluster://` URL (the client learns the others from them).
const MAX_SEEDS: usize = 16;
/// Reconnection attempts within one call (the next call tries again: a short burst is enough).
const RETRIES: u32 = 2;
/// Longest pause between two of them.
const MAX_RETRY_WAIT: Duration = Duration::from_millis(500);

/// An open connection, cheap to clone (both kinds multiplex one socket per node).
#[derive(Clone)]
pub(super) enum Connection {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects to `url` (one server, or a Cluster's seeds), each connection attempt and each
    /// reply bounded by `timeout`. The caller bounds the whole of it.
    pub(super) async fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        if url.starts_with(CLUSTER_SCHEME) {
            let client = cluster_client(url, timeout)?;
            let connection = client
                .get_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Connection::Cluster(connection));
        }
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(RETRIES as usize)
            .set_max_delay(MAX_RETRY_WAIT);
        ConnectionManager::new_with_config(client, config)
            .await
            .map(Connection::Single)
            .map_err(|e| e.to_string())
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT: on a Cluster SCRIPT LOAD goes to every
    /// master, so a slot that moves finds the script there too).
    pub(super) async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> RedisResult<Value> {
        match self {
            Connection::Single(c) => invoke_on(invocation, &mut c.clone()).await,
            Connection::Cluster(c) => invoke_on(invocation, &mut c.clone()).await,
        }
    }
}

async fn invoke_on(
    invocation: &ScriptInvocation<'_>,
    connection: &mut impl ConnectionLike,
) -> RedisResult<Value> {
    invocation.invoke_async::<Value>(connection).await
}

/// Checks a `--store` URL now, so that a typo fails at start-up, not at the first call.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with(CLUSTER_SCHEME) {
        cluster_client(url, Duration::from_secs(1)).map(|_| ())
    } else {
        redis::Client::open(url)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The cluster client of a `redis+cluster://` URL (no connection yet).
fn cluster_client(url: &str, timeout: Duration) -> Result<ClusterClient, String> {
    ClusterClient::builder(cluster_seeds(url)?)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(RETRIES)
        .max_retry_wait(MAX_RETRY_WAIT.as_millis() as u64)
        .build()
        .map_err(|e| e.to_string())
}

/// The seeds of `redis+cluster://[CREDENTIALS@]HOST:PORT[,HOST:PORT...]`, each as a
/// `redis://` URL (credentials repeated: every node of a Cluster takes the same ones).
fn cluster_seeds(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix(CLUSTER_SCHEME)
        .ok_or_else(|| format!("not a {CLUSTER_SCHEME} URL"))?;
    // The last `@` ends the credentials (a password may hold `@` or `,`; a host cannot).
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    if hosts.contains(['/', '?', '#']) {
        return Err("a Cluster URL names nodes only (a Cluster has one database, 0)".into());
    }
    let seeds: Vec<&str> = hosts.split(',').collect();
    if seeds.len() > MAX_SEEDS {
        return Err(format!("more than {MAX_SEEDS} seed nodes"));
    }
    if seeds.iter().any(|s| s.is_empty()) {
        return Err("an empty seed node (expected HOST:PORT[,HOST:PORT...])".into());
    }
    let seeds: Vec<String> = seeds
        .into_iter()
        .map(|seed| format!("redis://{credentials}{seed}"))
        .collect();
    for seed in &seeds {
        redis::Client::open(seed.as_str()).map_err(|e| format!("seed {}: {e}", redacted(seed)))?;
    }
    Ok(seeds)
}

/// `url` with any password replaced by `***` (for logs and messages): the credentials before
/// the host, and a `pass=` in the query (`redis+unix://` takes one there).
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first `/`, `?` or `#` (a URL's credentials cannot hold them
    // unescaped); within it, the last `@` ends the credentials.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("pass") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_shown() {
        assert_eq!(redacted("redis://:pw@h:1/2"), "redis://***@h:1/2");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
        assert_eq!(redacted("redis://u:p@ss@h:1/0"), "redis://***@h:1/0");
        assert_eq!(
            redacted("redis+unix:///run/r.sock?db=1&pass=secret"),
            "redis+unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(
            redacted("redis+cluster://u:p,w@a:1,b:2"),
            "redis+cluster://***@a:1,b:2"
        );
        assert_eq!(
            redacted("redis+cluster://a:1,b:2"),
            "redis+cluster://a:1,b:2"
        );
    }

    #[test]
    fn cluster_urls() {
        assert_eq!(
            cluster_seeds("redis+cluster://a:1,[::1]:2").unwrap(),
            ["redis://a:1", "redis://[::1]:2"]
        );
        assert_eq!(
            cluster_seeds("redis+cluster://:p@w,d@a:1,b:2").unwrap(),
            ["redis://:p@w,d@a:1", "redis://:p@w,d@b:2"]
        );
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,",
            "redis+cluster://a:1/0",
            "redis+cluster://a:1?x=1",
            "redis+cluster://a:notaport",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let many = vec!["h:1"; MAX_SEEDS + 1].join(",");
        assert!(check_url(&format!("{CLUSTER_SCHEME}{many}")).is_err());
        assert!(check_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").is_ok());
        assert!(check_url("redis://127.0.0.1:6379/2").is_ok());
    }
}
