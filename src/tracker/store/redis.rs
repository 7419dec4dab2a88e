//! The Redis store: the tracker's soft state in a Redis 7 server, or a Redis Cluster, that
//! several trackers share (`connection`: one server or a Cluster, the same scripts either way).
//!
//! Liveness is an expiring key per peer (three heartbeat intervals, renewed by every
//! authenticated call); holders are sets per version; every operation whose check and writes
//! must agree is one Lua script (`scripts`), run with EVALSHA. Redis's clock is the only clock,
//! so trackers on several hosts agree on who is alive.
//!
//! Every call is bounded in time ([`CALL_TIMEOUT`]): a Redis that is down or stuck makes calls
//! fail with [`TrackerError::StoreUnavailable`] (UNAVAILABLE), never hang; the connection
//! reconnects in the background (on a Cluster, to whichever node owns the slot now). Everything read back from Redis is treated as hostile
//! input, as a peer's request is: parsed into checked types, bounded, never trusted to be well
//! formed (an entry that does not parse is skipped, a reply of the wrong shape is
//! UNAVAILABLE).

mod connection;
mod reply;
mod scripts;

pub(super) use connection::{check_url, redacted, CLUSTER_SCHEME};

use super::{Page, Registration, Store, StoreCounts, StoreError};
use crate::names::{peer_address, validate_file_name, validate_peer_id};
use crate::pb::tracker as pb;
use crate::tracker::limits::MAX_PAGE_WORK;
use crate::tracker::page::{file_token, peer_token, FilePosition};
use crate::tracker::registry::{
    check_who_has, new_token, CheckedFile, Registered, MISSED_HEARTBEATS_BEFORE_DROP,
};
use crate::tracker::{TrackerError, TrackerLimits};
use connection::Connection;
use redis::Value;
use reply::{count, member, parse_member, parse_versions, split_page, text};
use scripts::Scripts;
use std::collections::HashSet;
use std::time::Duration;

/// Longest any one call to Redis may take (connecting included) before the caller gets
/// UNAVAILABLE: well inside a peer's 5 s deadline on a tracker call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Most versions of one name a `WhoHas` answer looks at (the in-memory store has no such cap;
/// a name with more versions than this is an attack, not a swarm).
const MAX_VERSIONS: usize = 1000;
/// Most silent peers one reaper call drops (each is one script's work: a bounded pause of
/// Redis).
const EXPIRE_BATCH: usize = 500;
/// Longest key prefix accepted.
const MAX_PREFIX_BYTES: usize = 64;

/// A `--store-prefix` is printable ASCII without braces (it becomes the hash tag).
pub(super) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_BYTES
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadSpec(format!(
            "prefix {:?}: 1-{MAX_PREFIX_BYTES} printable ASCII characters, no braces",
            crate::names::at_most(prefix, 80)
        )))
    }
}

/// The Redis store of one tracker process (the state is on the server).
pub(crate) struct RedisStore {
    connection: Connection,
    /// `{PREFIX}:`.
    prefix: String,
    /// `{PREFIX}:counts`: the key every script declares (it routes the call to the slot).
    routing_key: String,
    /// The URL, credentials hidden, for messages.
    url: String,
    heartbeat_interval: Duration,
    limits: TrackerLimits,
    scripts: Scripts,
}

/// The arguments of one script call, built up.
struct Call<'a> {
    invocation: redis::ScriptInvocation<'a>,
}

impl<'a> Call<'a> {
    fn arg(mut self, arg: impl redis::ToRedisArgs) -> Self {
        self.invocation.arg(arg);
        self
    }
}

impl RedisStore {
    /// Connects to `url` (one server or a Cluster's seeds, within [`CALL_TIMEOUT`]), keys
    /// under `{prefix}:`.
    pub(super) async fn open(
        url: &str,
        prefix: &str,
        heartbeat_interval: Duration,
        limits: TrackerLimits,
    ) -> Result<Self, StoreError> {
        check_prefix(prefix)?;
        let shown = redacted(url);
        let unreachable = |reason: String| StoreError::Unreachable {
            url: shown.clone(),
            reason,
        };
        let connection = tokio::time::timeout(CALL_TIMEOUT, Connection::open(url, CALL_TIMEOUT))
            .await
            .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT:?}")))?
            .map_err(unreachable)?;
        let prefix = format!("{{{prefix}}}:");
        let store = RedisStore {
            connection,
            routing_key: format!("{prefix}counts"),
            prefix,
            url: shown.clone(),
            heartbeat_interval,
            limits,
            scripts: Scripts::new(),
        };
        // One call now, so a server that refuses scripts (or a wrong database) fails at start.
        if let Err(e) = store.counts().await {
            return Err(StoreError::Unreachable {
                url: shown,
                reason: e.to_string(),
            });
        }
        Ok(store)
    }

    fn expiry_ms(&self) -> u64 {
        (self.heartbeat_interval * MISSED_HEARTBEATS_BEFORE_DROP).as_millis() as u64
    }

    /// A call of `script` with the routing key and the two common arguments.
    fn call<'a>(&'a self, script: &'a redis::Script) -> Call<'a> {
        let mut invocation = script.key(&self.routing_key);
        invocation.arg(&self.prefix).arg(self.expiry_ms());
        Call { invocation }
    }

    /// Runs `call` within [`CALL_TIMEOUT`]; the reply as a list of values.
    async fn run(&self, call: Call<'_>) -> Result<Vec<Value>, TrackerError> {
        let reply =
            tokio::time::timeout(CALL_TIMEOUT, self.connection.invoke(&call.invocation)).await;
        match reply {
            Ok(Ok(Value::Array(values))) => Ok(values),
            Ok(Ok(_)) => Err(self.unusable("a reply that is not a list")),
            Ok(Err(e)) => Err(TrackerError::StoreUnavailable(format!(
                "Redis at {}: {e}",
                self.url
            ))),
            Err(_) => Err(TrackerError::StoreUnavailable(format!(
                "Redis at {} did not answer within {CALL_TIMEOUT:?}",
                self.url
            ))),
        }
    }

    fn unusable(&self, what: &str) -> TrackerError {
        TrackerError::StoreUnavailable(format!("Redis at {} sent {what}", self.url))
    }

    /// A reply `{status, ...}`: `Ok(rest)` for "ok", the refusal it names otherwise.
    fn outcome(&self, peer_id: &str, reply: Vec<Value>) -> Result<Vec<Value>, TrackerError> {
        let mut values = reply.into_iter();
        let status = values.next().as_ref().and_then(text);
        let rest: Vec<Value> = values.collect();
        match status.as_deref() {
            Some("ok") => Ok(rest),
            Some("unknown") => Err(TrackerError::UnknownPeer(peer_id.to_string())),
            Some("wrong_token") => Err(TrackerError::WrongToken(peer_id.to_string())),
            Some("taken") => Err(TrackerError::PeerIdTaken {
                peer_id: peer_id.to_string(),
                address: rest
                    .first()
                    .and_then(text)
                    .and_then(|a| peer_address(&a))
                    .unwrap_or_else(|| "an unknown address".into()),
            }),
            Some("cap") => Err(self.cap(&rest)),
            _ => Err(self.unusable("an unknown status")),
        }
    }

    /// The refusal of cap `which` (`rest` = which, and the address for the per-address
    /// caps), named as the in-memory store names it.
    fn cap(&self, rest: &[Value]) -> TrackerError {
        let l = &self.limits;
        let ip = rest
            .get(1)
            .and_then(text)
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        match (rest.first().and_then(text).as_deref(), ip) {
            (Some("files"), _) => TrackerError::TooManyFiles(l.max_files_per_peer),
            (Some("peers"), _) => TrackerError::TooManyPeers(l.max_peers),
            (Some("catalog"), _) => TrackerError::CatalogFull(l.max_catalog_files),
            (Some("peers_ip"), Some(ip)) => TrackerError::TooManyPeersFrom(ip, l.max_peers_per_ip),
            (Some("files_ip"), Some(ip)) => TrackerError::TooManyFilesFrom(ip, l.max_files_per_ip),
            _ => self.unusable("an unknown cap"),
        }
    }

    /// The registration reply `{token, address}`, checked.
    fn registered(&self, rest: &[Value]) -> Result<Registered, TrackerError> {
        let token = rest
            .first()
            .and_then(text)
            .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        let address = rest.get(1).and_then(text).and_then(|a| peer_address(&a));
        match (token, address) {
            (Some(token), Some(address)) => Ok(Registered { token, address }),
            _ => Err(self.unusable("a malformed registration")),
        }
    }

    /// The caps a batch is checked against.
    fn limit_args<'a>(&self, call: Call<'a>) -> Call<'a> {
        let l = &self.limits;
        call.arg(l.max_files_per_peer)
            .arg(l.max_files_per_ip)
            .arg(l.max_catalog_files)
    }

    /// Adds `files` to a registered peer's catalog (a batch, or one announcement).
    async fn add_files(
        &self,
        peer_id: &str,
        token: &str,
        files: &[CheckedFile],
    ) -> Result<Registered, TrackerError> {
        validate_peer_id(peer_id)?;
        let call = self.call(&self.scripts.add_files).arg(peer_id).arg(token);
        let mut call = self.limit_args(call);
        for file in files {
            call = push_file(call, file);
        }
        let reply = self.run(call).await?;
        let rest = self.outcome(peer_id, reply)?;
        self.registered(&rest)
    }
}

/// Adds `file` as a (name, flag, version member) triple.
fn push_file<'a>(call: Call<'a>, file: &CheckedFile) -> Call<'a> {
    let flag = if file.partial() { "p" } else { "c" };
    call.arg(file.name())
        .arg(flag)
        .arg(member(file.name(), file.content_id(), file.size()))
}

#[tonic::async_trait]
impl Store for RedisStore {
    fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    async fn register(&self, registration: Registration) -> Result<Registered, TrackerError> {
        let Registration {
            peer_id,
            address,
            observed_ip,
            presented_token,
            files,
        } = registration;
        validate_peer_id(&peer_id)?;
        let mut seen = HashSet::with_capacity(files.len());
        let distinct = files.iter().filter(|f| seen.insert(f.name())).count();
        let l = &self.limits;
        let ip = observed_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let mut call = self
            .call(&self.scripts.register)
            .arg(&peer_id)
            .arg(&address)
            .arg(&ip)
            .arg(&presented_token)
            .arg(new_token())
            .arg(distinct)
            .arg(l.max_peers)
            .arg(l.max_peers_per_ip)
            .arg(l.max_files_per_peer)
            .arg(l.max_files_per_ip)
            .arg(l.max_catalog_files);
        for file in &files {
            call = push_file(call, file);
        }
        let reply = self.run(call).await?;
        let rest = self.outcome(&peer_id, reply)?;
        self.registered(&rest)
    }

    async fn register_more(
        &self,
        peer_id: &str,
        token: &str,
        files: Vec<CheckedFile>,
    ) -> Result<Registered, TrackerError> {
        self.add_files(peer_id, token, &files).await
    }

    async fn heartbeat(&self, peer_id: &str, token: &str) -> Result<(), TrackerError> {
        validate_peer_id(peer_id)?;
        let call = self.call(&self.scripts.heartbeat).arg(peer_id).arg(token);
        let reply = self.run(call).await?;
        self.outcome(peer_id, reply).map(|_| ())
    }

    async fn announce(
        &self,
        peer_id: &str,
        token: &str,
        file: CheckedFile,
    ) -> Result<(), TrackerError> {
        self.add_files(peer_id, token, std::slice::from_ref(&file))
            .await
            .map(|_| ())
    }

    async fn withdraw(&self, peer_id: &str, token: &str, name: &str) -> Result<(), TrackerError> {
        validate_file_name(name)?;
        validate_peer_id(peer_id)?;
        let call = self
            .call(&self.scripts.withdraw)
            .arg(peer_id)
            .arg(token)
            .arg(name);
        let reply = self.run(call).await?;
        self.outcome(peer_id, reply).map(|_| ())
    }

    async fn leave(&self, peer_id: &str, token: &str) -> Result<(), TrackerError> {
        validate_peer_id(peer_id)?;
        let call = self.call(&self.scripts.leave).arg(peer_id).arg(token);
        let reply = self.run(call).await?;
        self.outcome(peer_id, reply).map(|_| ())
    }

    async fn who_has(
        &self,
        name: &str,
        prefix: &str,
        max_holders: u32,
    ) -> Result<Vec<pb::FileVersion>, TrackerError> {
        let limit = check_who_has(name, prefix, max_holders)?;
        let low = format!("{name}\0{prefix}").into_bytes();
        let mut high = low.clone();
        high.push(0xff);
        let call = self
            .call(&self.scripts.who_has)
            .arg(low)
            .arg(high)
            .arg(limit)
            .arg(MAX_VERSIONS);
        let reply = self.run(call).await?;
        let versions = parse_versions(name, prefix, limit, reply)
            .ok_or_else(|| self.unusable("a malformed WhoHas answer"))?;
        if versions.is_empty() {
            return Err(TrackerError::UnknownFile(if prefix.is_empty() {
                format!("{name:?}")
            } else {
                format!("{name:?} with a content id starting {prefix}")
            }));
        }
        Ok(versions)
    }

    async fn peers_page(
        &self,
        after: Option<&str>,
        size: usize,
    ) -> Result<Page<pb::PeerSummary>, TrackerError> {
        let call = self
            .call(&self.scripts.peers_page)
            .arg(after.unwrap_or(""))
            .arg(size)
            .arg(MAX_PAGE_WORK);
        let reply = self.run(call).await?;
        let (more, last, entries) =
            split_page(&reply).ok_or_else(|| self.unusable("a malformed ListPeers page"))?;
        let mut page = Vec::with_capacity(size.min(entries.len() / 4));
        for entry in entries.chunks_exact(4).take(size) {
            let Some(id) = text(&entry[0]).filter(|id| validate_peer_id(id).is_ok()) else {
                continue;
            };
            let Some(address) = text(&entry[1]).and_then(|a| peer_address(&a)) else {
                continue;
            };
            page.push(pb::PeerSummary {
                peer_id: id,
                address,
                file_count: count(&entry[2]).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                total_bytes: count(&entry[3]).unwrap_or(0),
            });
        }
        let next = match last.filter(|_| more) {
            Some(last) if validate_peer_id(&last).is_ok() => Some(peer_token(&last)),
            Some(_) => return Err(self.unusable("a malformed ListPeers position")),
            None => None,
        };
        Ok((page, next))
    }

    async fn files_page(
        &self,
        after: Option<FilePosition>,
        size: usize,
    ) -> Result<Page<pb::FileSummary>, TrackerError> {
        let after = after.map_or_else(String::new, |p| member(&p.name, &p.content_id, p.size));
        let call = self
            .call(&self.scripts.files_page)
            .arg(after)
            .arg(size)
            .arg(MAX_PAGE_WORK);
        let reply = self.run(call).await?;
        let (more, last, entries) =
            split_page(&reply).ok_or_else(|| self.unusable("a malformed ListFiles page"))?;
        let mut page = Vec::with_capacity(size.min(entries.len() / 3));
        for entry in entries.chunks_exact(3).take(size) {
            let Some((name, cid, file_size)) = text(&entry[0]).and_then(|m| parse_member(&m))
            else {
                continue;
            };
            let live = count(&entry[1]).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
            let partial = count(&entry[2]).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
            page.push(pb::FileSummary {
                name,
                size: file_size,
                content_id: cid.to_hex(),
                holder_count: live,
                partial_holder_count: partial.min(live),
            });
        }
        let next = match last.filter(|_| more) {
            Some(last) => match parse_member(&last) {
                Some((name, cid, size)) => Some(file_token(&name, &cid, size)),
                None => return Err(self.unusable("a malformed ListFiles position")),
            },
            None => None,
        };
        Ok((page, next))
    }

    async fn expire(&self) -> Result<Vec<String>, TrackerError> {
        let call = self.call(&self.scripts.expire).arg(EXPIRE_BATCH);
        let reply = self.run(call).await?;
        // Only well-formed ids reach the log.
        Ok(reply
            .iter()
            .take(EXPIRE_BATCH)
            .filter_map(text)
            .filter(|id| validate_peer_id(id).is_ok())
            .collect())
    }

    async fn counts(&self) -> Result<StoreCounts, TrackerError> {
        let reply = self.run(self.call(&self.scripts.counts)).await?;
        match reply.as_slice() {
            [peers, entries, files] => Ok(StoreCounts {
                peers: count(peers).unwrap_or(0),
                catalog_entries: count(entries).unwrap_or(0),
                files: count(files).unwrap_or(0),
            }),
            _ => Err(self.unusable("malformed counts")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(check_prefix("p2pshare").is_ok());
        for bad in ["", "a{b", "a}", "a b", &"x".repeat(65)] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
