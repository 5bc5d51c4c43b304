-- Fragment (included by save, delete): removes the index entries of one packed
-- ``@idx:<owner>`` record (popoto.engine.write.pack_record) of the instance ``owner_key``.
-- base: the owner's record base; a row whose kind is in lower case is relative to it
-- (pack_record: {kind, rest of the key [, member]}).
-- kept: persistent companions (L, H) of a rewrite, by identity; nil when deleting
-- released: when set, unique claims (C) live elsewhere: collect them instead
-- An equality set of an IndexedField ($IndexF:<ns>:<field>:<value>) left empty takes
-- its value out of the field's value registries ($LexF:<ns>:<field>[:r], if any).
local function escaped_reverse(token)
  local text = string.gsub(token, '%%(%x%x)', function(h) return string.char(tonumber(h, 16)) end)
  local chars = {}
  for c in string.gmatch(text, '[%z\1-\127\194-\244][\128-\191]*') do
    table.insert(chars, 1, c)
  end
  return (string.gsub(table.concat(chars), '[%%:%*%?%[%]{}\\]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end
local function prune_registry(set_key)
  local ns, field, token = string.match(set_key, '^%$IndexF:([^:]+):([^:]+):(.*)$')
  if not token or redis.call('EXISTS', set_key) == 1 then return end
  local reg = '$LexF:' .. ns .. ':' .. field
  redis.call('ZREM', reg, token)
  redis.call('ZREM', reg .. ':r', escaped_reverse(token) .. '\255' .. token)
end
local function remove_entries(packed, owner_key, base, kept, released)
  if not packed then return end
  local entries = cmsgpack.unpack(packed)
  for _, e in ipairs(entries) do
    local kind, k, m = e[1], e[2], e[3] or owner_key
    local upper = string.upper(kind)
    if upper ~= kind then kind, k = upper, base .. (k or '') end
    if kept and kind == KIND_LINKED_KEY then kept[KIND_LINKED_KEY .. m] = e
    elseif kept and kind == KIND_COMPANION_FIELD then kept[KIND_COMPANION_FIELD .. k] = e
    elseif kind == KIND_LINKED_KEY then redis.call('DEL', k)
    elseif kind == KIND_COMPANION_FIELD then redis.call('HDEL', k, m)
    elseif kind == KIND_SET then
      redis.call('SREM', k, m)
      prune_registry(k)
    elseif kind == KIND_ZSET or kind == KIND_GEO then redis.call('ZREM', k, m)
    elseif kind == KIND_CLAIM and released then released[k .. '\n' .. m] = {k, m}
    elseif kind == KIND_CLAIM then
      if redis.call('HGET', k, m) == owner_key then redis.call('HDEL', k, m) end
    elseif kind == KIND_KEY then redis.call('DEL', k)
    end
  end
end
