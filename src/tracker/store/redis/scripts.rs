//! The Lua scripts of the Redis store. Each runs atomically on the server, so a check and the
//! writes it allows agree whichever tracker sends them (two registrations of one id, a
//! registration racing the cap, a `Leave` racing an `AnnounceFile`).
//!
//! Keys, all under the prefix `P` = `{PREFIX}:` (one hash tag: one Cluster slot). Every script
//! declares `P .. "counts"` as its key (that routes it to the slot) and builds the others from
//! `P` (ARGV[1]), all in the same slot:
//!
//! | key                | type   | holds                                                        |
//! |--------------------|--------|--------------------------------------------------------------|
//! | `P live:ID`        | string | "1", expiring after 3 heartbeat intervals: the peer is alive |
//! | `P peer:ID`        | hash   | token, addr, ip (observed, or empty), bytes (float sum)      |
//! | `P cat:ID`         | hash   | file name -> `c`/`p` (complete/partial) + version member     |
//! | `P vc:M`, `P vp:M` | set    | peer ids holding version M whole / in part                   |
//! | `P versions`       | zset   | version members M, score 0 (lexical order = ListFiles order) |
//! | `P peers`          | zset   | peer ids, score 0 (lexical order = ListPeers order)          |
//! | `P dl`             | zset   | peer id -> when it expires (ms, Redis clock): the reaper's   |
//! | `P counts`         | hash   | peers, entries (catalog entries in all)                      |
//! | `P ipp`, `P ipf`   | hash   | observed IP -> peers / catalog entries registered from it    |
//!
//! A version member M is `name \0 content-id-hex \0 size (20 digits)`: byte order is (name,
//! content id, size) order, as the in-memory index sorts. The rest of ARGV: ARGV[2] is the expiry
//! in ms; each script documents its own.
//!
//! A peer's records other than `live:ID` do not expire: they are removed with its holders and
//! counts by `Leave`, by a re-registration, or by the reaper (`EXPIRE`), so nothing is left in a
//! set or a counter after a peer is gone. Until the reaper runs, readers check `live:ID`.

/// Helpers every script starts with.
const COMMON: &str = r#"
local P = ARGV[1]
local EXPIRY = tonumber(ARGV[2])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function alive(id)
  return redis.call('EXISTS', P .. 'live:' .. id) == 1
end

-- HINCRBY by -n, the field removed at zero (hashes of counters stay small).
local function decr(hash, field, n)
  if redis.call('HINCRBY', hash, field, -n) <= 0 then
    redis.call('HDEL', hash, field)
  end
end

local function remove_file(id, name, ip)
  local cat = P .. 'cat:' .. id
  local v = redis.call('HGET', cat, name)
  if not v then return end
  local member = string.sub(v, 2)
  redis.call('HDEL', cat, name)
  redis.call('SREM', P .. 'vc:' .. member, id)
  redis.call('SREM', P .. 'vp:' .. member, id)
  if redis.call('EXISTS', P .. 'vc:' .. member, P .. 'vp:' .. member) == 0 then
    redis.call('ZREM', P .. 'versions', member)
  end
  decr(P .. 'counts', 'entries', 1)
  if ip ~= '' then decr(P .. 'ipf', ip, 1) end
  local size = tonumber(string.sub(member, -20)) or 0
  redis.call('HINCRBYFLOAT', P .. 'peer:' .. id, 'bytes', -size)
end

local function add_file(id, name, flag, member, ip)
  remove_file(id, name, ip)
  redis.call('HSET', P .. 'cat:' .. id, name, flag .. member)
  if flag == 'p' then
    redis.call('SADD', P .. 'vp:' .. member, id)
  else
    redis.call('SADD', P .. 'vc:' .. member, id)
  end
  redis.call('ZADD', P .. 'versions', 0, member)
  redis.call('HINCRBY', P .. 'counts', 'entries', 1)
  if ip ~= '' then redis.call('HINCRBY', P .. 'ipf', ip, 1) end
  local size = tonumber(string.sub(member, -20)) or 0
  redis.call('HINCRBYFLOAT', P .. 'peer:' .. id, 'bytes', size)
end

-- Everything of peer `id` goes: catalog, holders, counts, liveness.
local function remove_peer(id)
  local pk = P .. 'peer:' .. id
  local existed = redis.call('EXISTS', pk) == 1
  local ip = redis.call('HGET', pk, 'ip') or ''
  for _, name in ipairs(redis.call('HKEYS', P .. 'cat:' .. id)) do
    remove_file(id, name, ip)
  end
  redis.call('DEL', pk, P .. 'cat:' .. id, P .. 'live:' .. id)
  redis.call('ZREM', P .. 'peers', id)
  redis.call('ZREM', P .. 'dl', id)
  if existed then
    decr(P .. 'counts', 'peers', 1)
    if ip ~= '' then decr(P .. 'ipp', ip, 1) end
  end
end

-- The live peer `id` if `token` is its token (Lua 5.1 interns strings: `==` compares
-- references, so how long the tokens agree does not show in the time taken). It counts as heard
-- from: its liveness is renewed.
local function auth(id, token)
  if not alive(id) then return 'unknown' end
  local t = redis.call('HGET', P .. 'peer:' .. id, 'token')
  if not t then return 'unknown' end
  if t ~= token then return 'wrong_token' end
  redis.call('PEXPIRE', P .. 'live:' .. id, EXPIRY)
  redis.call('ZADD', P .. 'dl', now_ms() + EXPIRY, id)
  return nil
end
"#;

/// Register: ARGV[3] id, [4] address, [5] observed ip or "", [6] presented token, [7] a fresh
/// token, [8] distinct names in the files, [9..13] max peers, peers per ip, files per peer,
/// files per ip, catalog entries; from [14] (name, flag, member) triples.
/// Returns {"ok", token, address} | {"taken", address} | {"cap", which[, ip]}.
const REGISTER: &str = r#"
local id, addr, ip, presented, fresh = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local count = tonumber(ARGV[8])
local max_peers, max_peers_ip = tonumber(ARGV[9]), tonumber(ARGV[10])
local max_files_peer, max_files_ip, max_catalog = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local pk = P .. 'peer:' .. id
local old = redis.call('HMGET', pk, 'token', 'addr', 'ip')
local exists = old[1] ~= false
local token = fresh
if exists and alive(id) then
  local restarted = old[2] == addr and ip ~= '' and old[3] == ip
  if old[1] == presented then
    token = old[1]
  elseif not restarted then
    return {'taken', old[2] or ''}
  end
end
if count > max_files_peer then return {'cap', 'files'} end
local old_files = 0
if exists then old_files = redis.call('HLEN', P .. 'cat:' .. id) end
local counts = redis.call('HMGET', P .. 'counts', 'peers', 'entries')
local peers, entries = tonumber(counts[1]) or 0, tonumber(counts[2]) or 0
if not exists and peers >= max_peers then return {'cap', 'peers'} end
if ip ~= '' then
  local sp = tonumber(redis.call('HGET', P .. 'ipp', ip)) or 0
  local sf = tonumber(redis.call('HGET', P .. 'ipf', ip)) or 0
  if exists and old[3] == ip then
    sp = sp - 1
    sf = sf - old_files
  end
  if sp >= max_peers_ip then return {'cap', 'peers_ip', ip} end
  if sf + count > max_files_ip then return {'cap', 'files_ip', ip} end
end
if entries - old_files + count > max_catalog then return {'cap', 'catalog'} end
remove_peer(id)
redis.call('HSET', pk, 'token', token, 'addr', addr, 'ip', ip, 'bytes', 0)
redis.call('SET', P .. 'live:' .. id, '1', 'PX', EXPIRY)
redis.call('ZADD', P .. 'peers', 0, id)
redis.call('ZADD', P .. 'dl', now_ms() + EXPIRY, id)
redis.call('HINCRBY', P .. 'counts', 'peers', 1)
if ip ~= '' then redis.call('HINCRBY', P .. 'ipp', ip, 1) end
for i = 14, #ARGV - 2, 3 do
  add_file(id, ARGV[i], ARGV[i + 1], ARGV[i + 2], ip)
end
return {'ok', token, addr}
"#;

/// One more batch, or one announcement: ARGV[3] id, [4] token, [5..7] max files per peer,
/// files per ip, catalog entries; from [8] (name, flag, member) triples.
/// Returns {"ok", token, address} | {"unknown"} | {"wrong_token"} | {"cap", which[, ip]}.
const ADD_FILES: &str = r#"
local id, token = ARGV[3], ARGV[4]
local max_files_peer, max_files_ip, max_catalog = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local refused = auth(id, token)
if refused then return {refused} end
local pk, cat = P .. 'peer:' .. id, P .. 'cat:' .. id
local seen, growth = {}, 0
for i = 8, #ARGV - 2, 3 do
  local name = ARGV[i]
  if not seen[name] then
    seen[name] = true
    if redis.call('HEXISTS', cat, name) == 0 then growth = growth + 1 end
  end
end
if redis.call('HLEN', cat) + growth > max_files_peer then return {'cap', 'files'} end
local ip = redis.call('HGET', pk, 'ip') or ''
if ip ~= '' then
  local sf = tonumber(redis.call('HGET', P .. 'ipf', ip)) or 0
  if sf + growth > max_files_ip then return {'cap', 'files_ip', ip} end
end
local entries = tonumber(redis.call('HGET', P .. 'counts', 'entries')) or 0
if entries + growth > max_catalog then return {'cap', 'catalog'} end
for i = 8, #ARGV - 2, 3 do
  add_file(id, ARGV[i], ARGV[i + 1], ARGV[i + 2], ip)
end
local f = redis.call('HMGET', pk, 'token', 'addr')
return {'ok', f[1] or '', f[2] or ''}
"#;

/// Heartbeat: ARGV[3] id, [4] token. Returns {"ok"} | {"unknown"} | {"wrong_token"}.
const HEARTBEAT: &str = r#"
local refused = auth(ARGV[3], ARGV[4])
if refused then return {refused} end
return {'ok'}
"#;

/// Withdraw: ARGV[3] id, [4] token, [5] name. Returns as heartbeat.
const WITHDRAW: &str = r#"
local id = ARGV[3]
local refused = auth(id, ARGV[4])
if refused then return {refused} end
remove_file(id, ARGV[5], redis.call('HGET', P .. 'peer:' .. id, 'ip') or '')
return {'ok'}
"#;

/// Leave: ARGV[3] id, [4] token. Returns as heartbeat.
const LEAVE: &str = r#"
local refused = auth(ARGV[3], ARGV[4])
if refused then return {refused} end
remove_peer(ARGV[3])
return {'ok'}
"#;

/// Expire: ARGV[3] most peers to look at. Returns the ids dropped.
const EXPIRE: &str = r#"
local now = now_ms()
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'dl', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  if alive(id) then
    -- Renewed by a call that raced this one: move its deadline to what the key says.
    local ttl = redis.call('PTTL', P .. 'live:' .. id)
    if ttl < 0 then ttl = EXPIRY end
    redis.call('ZADD', P .. 'dl', now + ttl, id)
  else
    remove_peer(id)
    out[#out + 1] = id
  end
end
return out
"#;

/// WhoHas: ARGV[3] lowest member (inclusive), [4] highest member (inclusive), [5] most holders
/// per version, [6] most versions. Returns, per version with a live holder: member, live
/// complete holders, live holders, n, then n (id, address, flag) triples: every live holder when a
/// set is small, else a random sample of about 1.5x the most (counts are then the sets' sizes,
/// which may include peers the reaper has yet to drop).
const WHO_HAS: &str = r#"
local limit = tonumber(ARGV[5])
local function live_of(set)
  local card = redis.call('SCARD', set)
  if card == 0 then return {}, 0 end
  local ids
  local exact = card <= 2 * limit
  if exact then
    ids = redis.call('SMEMBERS', set)
  else
    ids = redis.call('SRANDMEMBER', set, limit + math.floor(limit / 2))
  end
  local live = {}
  for _, id in ipairs(ids) do
    if alive(id) then live[#live + 1] = id end
  end
  if exact then return live, #live end
  return live, card
end
local out = {}
local members = redis.call('ZRANGEBYLEX', P .. 'versions', '[' .. ARGV[3], '[' .. ARGV[4], 'LIMIT', 0, tonumber(ARGV[6]))
for _, member in ipairs(members) do
  local complete, nc = live_of(P .. 'vc:' .. member)
  local partial, np = live_of(P .. 'vp:' .. member)
  if nc + np > 0 and #complete + #partial > 0 then
    out[#out + 1] = member
    out[#out + 1] = nc
    out[#out + 1] = nc + np
    out[#out + 1] = #complete + #partial
    for _, pair in ipairs({{complete, 'c'}, {partial, 'p'}}) do
      for _, id in ipairs(pair[1]) do
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGET', P .. 'peer:' .. id, 'addr') or ''
        out[#out + 1] = pair[2]
      end
    end
  end
end
return out
"#;

/// ListPeers: ARGV[3] the last id of the previous page or "", [4] page size, [5] most peers to
/// look at. Returns {more (0/1), last id looked at}, then (id, address, files, bytes) per peer.
const PEERS_PAGE: &str = r#"
local after, size, work = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local lo = '-'
if after ~= '' then lo = '(' .. after end
local ids = redis.call('ZRANGEBYLEX', P .. 'peers', lo, '+', 'LIMIT', 0, work + 1)
local out = {0, ''}
local n, last = 0, ''
for i, id in ipairs(ids) do
  if n >= size or i > work then
    out[1], out[2] = 1, last
    return out
  end
  last = id
  if alive(id) then
    local f = redis.call('HMGET', P .. 'peer:' .. id, 'addr', 'bytes')
    if f[1] then
      out[#out + 1] = id
      out[#out + 1] = f[1]
      out[#out + 1] = redis.call('HLEN', P .. 'cat:' .. id)
      out[#out + 1] = f[2] or '0'
      n = n + 1
    end
  end
end
return out
"#;

/// ListFiles: ARGV[3] the last member of the previous page or "", [4] page size, [5] most
/// holders to look at. Returns {more (0/1), last member looked at}, then (member, live holders,
/// live partial holders) per version.
const FILES_PAGE: &str = r#"
local after, size, work = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local lo = '-'
if after ~= '' then lo = '(' .. after end
local out = {0, ''}
local n, done, last = 0, 0, ''
while true do
  local members = redis.call('ZRANGEBYLEX', P .. 'versions', lo, '+', 'LIMIT', 0, 1000)
  if #members == 0 then return out end
  for _, member in ipairs(members) do
    if n >= size or done >= work then
      out[1], out[2] = 1, last
      return out
    end
    last = member
    local live, partial = 0, 0
    for _, id in ipairs(redis.call('SMEMBERS', P .. 'vc:' .. member)) do
      done = done + 1
      if alive(id) then live = live + 1 end
    end
    for _, id in ipairs(redis.call('SMEMBERS', P .. 'vp:' .. member)) do
      done = done + 1
      if alive(id) then
        live = live + 1
        partial = partial + 1
      end
    end
    if live > 0 then
      out[#out + 1] = member
      out[#out + 1] = live
      out[#out + 1] = partial
      n = n + 1
    end
  end
  lo = '(' .. last
end
"#;

/// Counts: {peers, entries, versions}.
const COUNTS: &str = r#"
local c = redis.call('HMGET', P .. 'counts', 'peers', 'entries')
return {tonumber(c[1]) or 0, tonumber(c[2]) or 0, redis.call('ZCARD', P .. 'versions')}
"#;

/// The scripts, each compiled once (its SHA1 computed; Redis loads it on first use, again
/// after a restart: `redis::Script` answers NOSCRIPT with SCRIPT LOAD).
pub(super) struct Scripts {
    pub(super) register: redis::Script,
    pub(super) add_files: redis::Script,
    pub(super) heartbeat: redis::Script,
    pub(super) withdraw: redis::Script,
    pub(super) leave: redis::Script,
    pub(super) expire: redis::Script,
    pub(super) who_has: redis::Script,
    pub(super) peers_page: redis::Script,
    pub(super) files_page: redis::Script,
    pub(super) counts: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let script = |body: &str| redis::Script::new(&[COMMON, body].concat());
        Scripts {
            register: script(REGISTER),
            add_files: script(ADD_FILES),
            heartbeat: script(HEARTBEAT),
            withdraw: script(WITHDRAW),
            leave: script(LEAVE),
            expire: script(EXPIRE),
            who_has: script(WHO_HAS),
            peers_page: script(PEERS_PAGE),
            files_page: script(FILES_PAGE),
            counts: script(COUNTS),
        }
    }
}
