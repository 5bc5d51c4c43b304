-- Fragment (included by save, delete): removes the index entries of one packed
-- ``@idx:<owner>`` record (popoto.engine.write.pack_record) of the instance ``owner_key``.
-- base: the owner's record base; a row whose kind is in lower case is relative to it
-- (pack_record: {kind, rest of the key [, member]}).
-- kept: persistent companions (L, H) of a rewrite, by identity; nil when deleting
-- released: when set, unique claims (C) live elsewhere: collect them instead
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
    elseif kind == KIND_SET then redis.call('SREM', k, m)
    elseif kind == KIND_ZSET or kind == KIND_GEO then redis.call('ZREM', k, m)
    elseif kind == KIND_CLAIM and released then released[k .. '\n' .. m] = {k, m}
    elseif kind == KIND_CLAIM then
      if redis.call('HGET', k, m) == owner_key then redis.call('HDEL', k, m) end
    elseif kind == KIND_KEY then redis.call('DEL', k)
    end
  end
end
