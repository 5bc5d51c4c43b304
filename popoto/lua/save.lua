--! include: remove_entries run_commands save_one
-- SAVE: the single write of one instance: save_one with its KEYS and ARGV from the start.
return save_one(0, 0)
