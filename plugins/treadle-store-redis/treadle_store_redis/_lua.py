"""The Lua scripts: every write is applied by ``COMMIT``, atomically, after its checks pass.

Key layout (``P`` is the store's prefix; ``ID`` an item id, ``S`` a stage name)::

    P:meta             hash    schema version
    P:seq              string  INCR: creation order of items
    P:items            zset    ID by creation order (every item)
    P:state:STATE      zset    ID by creation order, per aggregate state
    P:due              zset    ID by due_at (items that have work coming)
    P:due:STATE        zset    ID by due_at, per aggregate state
    P:complete_at      zset    ID by updated_at, COMPLETE items only (for prune)
    P:item:ID          hash    state, due, owner, token, expires, created, updated, seq
    P:data:ID          string  the item's JSON data
    P:stages:ID        hash    S -> StageState JSON
    P:status:ID        hash    S -> status (for the summary and the review queue)
    P:summary          hash    "STATUS:S" -> number of items
    P:rq               zset    LEN:IDS (LEN = byte length of ID) by since: awaiting review
    P:rq:S             zset    ID by since: awaiting review at stage S
    P:stale:S          zset    ID (score 0, lexical order): stage S is stale
    P:definition       string  the recorded pipeline definition (JSON)
    P:att:LEN:ID:S     list    AttemptRecord JSON, in order
    P:attkeys:ID       set     the item's attempt-list keys (for deletes)
    P:reviews:ID       list    {"stage", "record"} JSON, in order
    P:evseq            string  INCR: event ids
    P:journal          stream  entries "N-0" {item, event}: the journal in commit order
    P:ijournal:ID      zset    event ids of the item
    P:lock:ID          string  transaction lock (owner token, with a TTL)
    P:leases           zset    ID by lease expiry (items claimed; live ones score > now)
    P:mark:MARK        string  a committed transaction's commit mark (expires after an hour)

Times are epoch seconds, written as the exact strings Python sent (never formatted
by Lua, whose ``tostring`` would round them). An absent hash field is None.
"""

from __future__ import annotations

#: Ops and their argument counts (``events`` is followed by a count, then pairs).
OP_ARITY = {
    "put_data": 3,  # id, data json, now
    "set_state": 4,  # id, state, due ("" = None), now
    "save_stage": 6,  # id, stage, state json, status, review score ("" = not awaiting), stale
    "drop_stage": 2,  # id, stage
    "move_attempts": 3,  # id, old stage, new stage
    "put_definition": 1,  # definition json
    "revoke": 1,  # id
    "attempt": 3,  # id, stage, record json
    "review": 2,  # id, entry json
    "delete": 1,  # id
    "prune": 2,  # id, cutoff
    "renew": 3,  # id, token, expires
    "release": 2,  # id, token
    "mark": 1,  # commit mark
}
#: Ops followed by a count, then that many arguments (``events``: pairs).
VARIADIC = ("events", "set_reviews")

_COMMON = r"""
local P = ARGV[1]
local function ikey(id) return P .. ':item:' .. id end
local function attkey(id, stage)
  return P .. ':att:' .. string.len(id) .. ':' .. id .. ':' .. stage
end
local function rqmember(id, stage) return string.len(id) .. ':' .. id .. stage end
local function fail(...) return redis.error_reply('TREADLE ' .. cjson.encode({...})) end
"""

COMMIT = (
    _COMMON
    + r"""
-- ARGV: P, nlocks, (id, token)*, nfences, (id, token)*, then ops: name, args...
local pos = 2
local function nxt() local v = ARGV[pos]; pos = pos + 1; return v end
local locks, fences, ops = {}, {}, {}
for _ = 1, tonumber(nxt()) do local id = nxt(); locks[#locks + 1] = {id, nxt()} end
for _ = 1, tonumber(nxt()) do local id = nxt(); fences[#fences + 1] = {id, nxt()} end
local arity = {put_data=3, set_state=4, save_stage=6, attempt=3, review=2, delete=1,
               prune=2, renew=3, release=2, mark=1, drop_stage=2, move_attempts=3,
               put_definition=1, revoke=1}
while pos <= #ARGV do
  local name = nxt()
  local op = {name}
  if name == 'events' then
    local n = tonumber(nxt())
    for _ = 1, 2 * n do op[#op + 1] = nxt() end
  elseif name == 'set_reviews' then
    op[#op + 1] = nxt()  -- id
    local n = tonumber(nxt())
    for _ = 1, n do op[#op + 1] = nxt() end
  else
    local k = arity[name]
    if k == nil then return fail('bad_op', name) end
    for _ = 1, k do op[#op + 1] = nxt() end
  end
  ops[#ops + 1] = op
end

-- 1. Checks, before anything is written (a script's writes are not rolled back).
for _, l in ipairs(locks) do
  if redis.call('GET', P .. ':lock:' .. l[1]) ~= l[2] then return fail('lock_lost', l[1]) end
end
for _, f in ipairs(fences) do
  local rec = redis.call('HMGET', ikey(f[1]), 'token', 'owner')
  if not rec[1] then return fail('unknown', f[1]) end
  if rec[1] ~= f[2] then return fail('lease_lost', f[1], f[2], rec[1], rec[2] or '') end
end
local exists = {}  -- id -> whether it exists once the ops before have run
local function view(id)
  if exists[id] == nil then exists[id] = redis.call('EXISTS', ikey(id)) == 1 end
  return exists[id]
end
for _, op in ipairs(ops) do
  local name, id = op[1], op[2]
  if name == 'put_data' then
    exists[id] = true
  elseif name == 'set_state' or name == 'save_stage' or name == 'revoke' then
    if not view(id) then return fail('unknown', id) end
  elseif name == 'delete' then
    exists[id] = false
  end
end

-- 2. Writes.
local function summary_add(status, stage, n)
  local field = status .. ':' .. stage
  if redis.call('HINCRBY', P .. ':summary', field, n) <= 0 then
    redis.call('HDEL', P .. ':summary', field)
  end
end

local function delete_item(id)
  local ik = ikey(id)
  local state = redis.call('HGET', ik, 'state')
  if state then
    redis.call('ZREM', P .. ':items', id)
    redis.call('ZREM', P .. ':state:' .. state, id)
    redis.call('ZREM', P .. ':due', id)
    redis.call('ZREM', P .. ':due:' .. state, id)
    redis.call('ZREM', P .. ':complete_at', id)
  end
  redis.call('ZREM', P .. ':leases', id)
  local st = redis.call('HGETALL', P .. ':status:' .. id)
  for i = 1, #st, 2 do
    summary_add(st[i + 1], st[i], -1)
    redis.call('ZREM', P .. ':rq', rqmember(id, st[i]))
    redis.call('ZREM', P .. ':rq:' .. st[i], id)
    redis.call('ZREM', P .. ':stale:' .. st[i], id)
  end
  for _, k in ipairs(redis.call('SMEMBERS', P .. ':attkeys:' .. id)) do redis.call('DEL', k) end
  local evs = redis.call('ZRANGE', P .. ':ijournal:' .. id, 0, -1)
  for i = 1, #evs, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #evs) do chunk[#chunk + 1] = evs[j] .. '-0' end
    redis.call('XDEL', P .. ':journal', unpack(chunk))
  end
  redis.call('DEL', ik, P .. ':data:' .. id, P .. ':stages:' .. id, P .. ':status:' .. id,
             P .. ':attkeys:' .. id, P .. ':reviews:' .. id, P .. ':ijournal:' .. id)
end

local results = {}
for _, op in ipairs(ops) do
  local name, id = op[1], op[2]
  local r = 0
  if name == 'put_data' then
    local ik, now = ikey(id), op[4]
    if redis.call('EXISTS', ik) == 0 then
      local seq = redis.call('INCR', P .. ':seq')
      redis.call('HSET', ik, 'state', 'ready', 'due', now, 'token', '0', 'created', now,
                 'updated', now, 'seq', seq)
      redis.call('ZADD', P .. ':items', seq, id)
      redis.call('ZADD', P .. ':state:ready', seq, id)
      redis.call('ZADD', P .. ':due', now, id)
      redis.call('ZADD', P .. ':due:ready', now, id)
    end
    redis.call('SET', P .. ':data:' .. id, op[3])
  elseif name == 'set_state' then
    local ik, state, due, now = ikey(id), op[3], op[4], op[5]
    local old = redis.call('HMGET', ik, 'state', 'seq')
    redis.call('ZREM', P .. ':state:' .. old[1], id)
    redis.call('ZREM', P .. ':due:' .. old[1], id)
    redis.call('ZADD', P .. ':state:' .. state, old[2], id)
    if due == '' then
      redis.call('ZREM', P .. ':due', id)
      redis.call('HDEL', ik, 'due')
    else
      redis.call('ZADD', P .. ':due', due, id)
      redis.call('ZADD', P .. ':due:' .. state, due, id)
      redis.call('HSET', ik, 'due', due)
    end
    if state == 'complete' then
      redis.call('ZADD', P .. ':complete_at', now, id)
    else
      redis.call('ZREM', P .. ':complete_at', id)
    end
    redis.call('HSET', ik, 'state', state, 'updated', now)
  elseif name == 'save_stage' then
    local stage, status, score = op[3], op[5], op[6]
    local old = redis.call('HGET', P .. ':status:' .. id, stage)
    if old then summary_add(old, stage, -1) end
    summary_add(status, stage, 1)
    redis.call('HSET', P .. ':stages:' .. id, stage, op[4])
    redis.call('HSET', P .. ':status:' .. id, stage, status)
    if score == '' then
      redis.call('ZREM', P .. ':rq', rqmember(id, stage))
      redis.call('ZREM', P .. ':rq:' .. stage, id)
    else
      redis.call('ZADD', P .. ':rq', score, rqmember(id, stage))
      redis.call('ZADD', P .. ':rq:' .. stage, score, id)
    end
    if op[7] == '1' then
      redis.call('ZADD', P .. ':stale:' .. stage, 0, id)
    else
      redis.call('ZREM', P .. ':stale:' .. stage, id)
    end
  elseif name == 'drop_stage' then
    local stage = op[3]
    local old = redis.call('HGET', P .. ':status:' .. id, stage)
    if old then summary_add(old, stage, -1) end
    redis.call('HDEL', P .. ':stages:' .. id, stage)
    redis.call('HDEL', P .. ':status:' .. id, stage)
    redis.call('ZREM', P .. ':rq', rqmember(id, stage))
    redis.call('ZREM', P .. ':rq:' .. stage, id)
    redis.call('ZREM', P .. ':stale:' .. stage, id)
  elseif name == 'move_attempts' then
    local from, to = attkey(id, op[3]), attkey(id, op[4])
    local records = redis.call('LRANGE', from, 0, -1)
    if #records > 0 then
      local kept = redis.call('LRANGE', to, 0, -1)
      redis.call('DEL', from, to)
      for _, r in ipairs(records) do redis.call('RPUSH', to, r) end
      for _, r in ipairs(kept) do redis.call('RPUSH', to, r) end
      redis.call('SREM', P .. ':attkeys:' .. id, from)
      redis.call('SADD', P .. ':attkeys:' .. id, to)
    end
  elseif name == 'set_reviews' then
    local k = P .. ':reviews:' .. id
    redis.call('DEL', k)
    for i = 3, #op do redis.call('RPUSH', k, op[i]) end
  elseif name == 'put_definition' then
    redis.call('SET', P .. ':definition', op[2])
  elseif name == 'revoke' then
    local ik = ikey(id)
    redis.call('HINCRBY', ik, 'token', 1)
    redis.call('HDEL', ik, 'owner', 'expires')
  elseif name == 'attempt' then
    local k = attkey(id, op[3])
    redis.call('RPUSH', k, op[4])
    redis.call('SADD', P .. ':attkeys:' .. id, k)
  elseif name == 'review' then
    redis.call('RPUSH', P .. ':reviews:' .. id, op[3])
  elseif name == 'events' then
    for i = 2, #op, 2 do
      local eid = redis.call('INCR', P .. ':evseq')
      redis.call('XADD', P .. ':journal', eid .. '-0', 'item', op[i], 'event', op[i + 1])
      redis.call('ZADD', P .. ':ijournal:' .. op[i], eid, eid)
    end
  elseif name == 'delete' then
    delete_item(id)
  elseif name == 'prune' then
    local rec = redis.call('HMGET', ikey(id), 'state', 'updated')
    if rec[1] == 'complete' and tonumber(rec[2]) < tonumber(op[3]) then
      delete_item(id)
      r = 1
    end
  elseif name == 'renew' then
    local ik = ikey(id)
    if redis.call('HGET', ik, 'token') == op[3] then
      redis.call('HSET', ik, 'expires', op[4])
      redis.call('ZADD', P .. ':leases', op[4], id)
      r = 1
    end
  elseif name == 'release' then
    local ik = ikey(id)
    if redis.call('HGET', ik, 'token') == op[3] then
      redis.call('HDEL', ik, 'owner', 'expires')
      redis.call('ZREM', P .. ':leases', id)
      r = 1
    end
  elseif name == 'mark' then
    redis.call('SET', P .. ':mark:' .. id, '1', 'EX', 3600)
  end
  results[#results + 1] = r
end
for _, l in ipairs(locks) do redis.call('DEL', P .. ':lock:' .. l[1]) end
return results
"""
)

CLAIM = (
    _COMMON
    + r"""
-- ARGV: P, worker, now, expires, limit, ids...; without ids: due items, earliest first.
local worker, now, expires, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local nnow = tonumber(now)
local out = {}
local function try(id)
  local ik = ikey(id)
  local rec = redis.call('HMGET', ik, 'token', 'expires')
  if not rec[1] then return end
  if rec[2] and tonumber(rec[2]) > nnow then return end
  local token = tonumber(rec[1]) + 1
  redis.call('HSET', ik, 'owner', worker, 'token', token, 'expires', expires)
  redis.call('ZADD', P .. ':leases', expires, id)
  out[#out + 1] = id
  out[#out + 1] = token
end
if #ARGV > 5 then
  for i = 6, #ARGV do
    if #out >= 2 * limit then break end
    try(ARGV[i])
  end
else
  local offset = 0
  while #out < 2 * limit do
    local batch = redis.call('ZRANGE', P .. ':due', '-inf', now, 'BYSCORE', 'LIMIT', offset, 100)
    if #batch == 0 then break end
    for _, id in ipairs(batch) do
      if #out >= 2 * limit then break end
      try(id)
    end
    offset = offset + #batch
  end
end
return out
"""
)

NEXT_DUE = (
    _COMMON
    + r"""
-- ARGV: P, now, due-zset keys...: the earliest time an item becomes claimable (a string).
local now = tonumber(ARGV[2])
local best, best_s = nil, false
for k = 3, #ARGV do
  local offset = 0
  local done = false
  while not done do
    local batch = redis.call('ZRANGE', ARGV[k], offset, offset + 99, 'WITHSCORES')
    if #batch == 0 then break end
    for i = 1, #batch, 2 do
      local due_s = batch[i + 1]
      local due = tonumber(due_s)
      if best ~= nil and due >= best then done = true; break end
      local cand, cand_s = due, due_s
      local exp = redis.call('HGET', ikey(batch[i]), 'expires')
      if exp and tonumber(exp) > now and tonumber(exp) > due then
        cand, cand_s = tonumber(exp), exp
      end
      if best == nil or cand < best then best, best_s = cand, cand_s end
    end
    offset = offset + 100
  end
end
return best_s
"""
)

EXPIRE_LEASES = (
    _COMMON
    + r"""
-- ARGV: P, now, owners...: end now every live lease these owners hold; how many.
local now = ARGV[2]
local owners = {}
for i = 3, #ARGV do owners[ARGV[i]] = true end
local n = 0
local live = redis.call('ZRANGE', P .. ':leases', '(' .. now, '+inf', 'BYSCORE')
for _, id in ipairs(live) do
  local ik = ikey(id)
  local owner = redis.call('HGET', ik, 'owner')
  if owner and owners[owner] then
    redis.call('HSET', ik, 'expires', now)
    redis.call('ZADD', P .. ':leases', now, id)
    n = n + 1
  end
end
return n
"""
)

UNLOCK = r"""
-- ARGV: P, (id, token)*: drop the locks still held with these tokens.
for i = 2, #ARGV, 2 do
  local k = ARGV[1] .. ':lock:' .. ARGV[i]
  if redis.call('GET', k) == ARGV[i + 1] then redis.call('DEL', k) end
end
return 0
"""
