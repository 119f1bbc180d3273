-- Duplicate source ids (issue 12). A message is (lane, source id); a
-- second line with the same id must be the same message. content_hash is
-- SHA-256 of the parsed input message (not of the request body, which
-- depends on the load), so a reload of the same message matches and a
-- different message under a reused id is rejected, naming `origin` (file
-- and line of the load that stored it). Rows loaded before this migration
-- have neither and are taken as the same message.
ALTER TABLE jobs ADD COLUMN content_hash bytea, ADD COLUMN origin text;
